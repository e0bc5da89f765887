"""The teacher protocol (flowkd.teachers): every kind of teacher answers ``teacher(batch) -> {tap: tensor}``,
checked against the features computed by hand; a wrong answer is one clear error, not an IndexError."""

import pytest
import torch

from flowkd import Batch, DistillStep, FeatureBank, InformationFlowLoss, as_teacher
from flowkd.errors import FlowKDError
from flowkd.models.mlp import MLP
from flowkd.teachers import SharedTeacher


def _net_and_batch():
    torch.manual_seed(0)
    net = MLP(12, (6, 4))
    g = torch.Generator().manual_seed(1)
    return net, Batch(torch.randn(5, 12, generator=g), torch.arange(5), index=torch.tensor([4, 0, 2, 1, 3]))


def _by_hand(net, x):
    h1 = torch.relu(net.fc1(x))
    return {"fc1_relu": h1, "fc2_relu": torch.relu(net.fc2(h1))}


def test_a_network_an_extractor_features_and_a_shared_teacher_answer_alike():
    net, batch = _net_and_batch()
    with torch.no_grad():
        want = _by_hand(net, batch.x)
    taps = ["fc1_relu", "fc2_relu"]
    rows = torch.empty(5, 4)
    rows[batch.index] = want["fc2_relu"]  # the bank holds row i for sample i
    teachers = {
        "network": as_teacher(net, taps),
        "extractor": as_teacher(lambda x: _by_hand(net, x), taps),
        "features": as_teacher(FeatureBank({"fc2_relu": rows}), ["fc2_relu"]),
        "shared": SharedTeacher(as_teacher(net, taps)),
    }
    for kind, teacher in teachers.items():
        got = teacher(batch)
        for tap in teacher.taps:
            torch.testing.assert_close(got[tap], want[tap], msg=kind)
        teacher.close()


def test_a_shared_teacher_computes_once_per_batch():
    net, batch = _net_and_batch()
    calls = []
    shared = SharedTeacher(as_teacher(lambda x: calls.append(1) or _by_hand(net, x), ["fc2_relu"]))
    assert shared(batch) is shared(batch) and len(calls) == 1
    shared(Batch(batch.x, batch.y))
    assert len(calls) == 2  # another batch, another memo


def test_an_extractor_may_return_a_bare_tensor_for_one_tap():
    net, batch = _net_and_batch()
    student = MLP(12, (3,))
    flow = InformationFlowLoss([("fc2_relu", "fc1_relu")])
    with DistillStep(student, lambda x: _by_hand(net, x)["fc2_relu"], flow) as bare, \
            DistillStep(student, lambda x: _by_hand(net, x), flow) as mapping:
        assert torch.equal(bare(batch)["loss"], mapping(batch)["loss"])


@pytest.mark.parametrize("fn, fragment", [
    (lambda x: x[:, :4], "returned a single tensor of shape (5, 4), but the loss reads 2 taps (a, b)"),
    (lambda x: {"a": x}, "returned the taps a but not b, which the loss reads"),
    (lambda x: [x, x], "returned a list; expected a dict {tap: features} with the taps a, b"),
])
def test_an_extractor_that_answers_wrongly_is_one_clear_error(fn, fragment):
    _, batch = _net_and_batch()
    with pytest.raises(FlowKDError) as e:
        as_teacher(fn, ["a", "b"])(batch)
    assert fragment in str(e.value)


def test_features_need_the_sample_positions_and_a_bad_teacher_is_refused():
    teacher = as_teacher(FeatureBank({"f": torch.randn(5, 2)}), ["f"])
    with pytest.raises(FlowKDError, match="needs the batch's sample positions"):
        teacher(Batch(torch.randn(5, 12), torch.arange(5)))
    with pytest.raises(FlowKDError, match="unknown tap 'g'"):
        as_teacher(FeatureBank({"f": torch.randn(5, 2)}), ["g"])
    with pytest.raises(FlowKDError, match="a teacher must be a network"):
        as_teacher(3, ["f"])
    with pytest.raises(FlowKDError, match="answers the taps f, not g"):
        as_teacher(teacher, ["g"])
