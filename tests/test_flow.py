"""Information flow: pairing, schedules, and the weighted sum, checked by hand."""

import pytest
import torch

from flowkd import Constant, CriticalPeriod, FlowKDError, InformationFlowLoss, pkt_loss
from flowkd.schedules import SCHEDULES


def test_critical_period_weights():
    cp = CriticalPeriod()
    assert cp(0, 4) == [100.0, 100.0, 100.0, 1.0]
    assert cp(1, 4)[:3] == pytest.approx([70.0] * 3)
    assert cp(10, 2)[0] == pytest.approx(100 * 0.7**10)  # ~2.8: the end of the critical period
    assert cp(11, 2)[0] < 2.0 < cp(10, 2)[0]
    assert all(cp(e, 3)[-1] == 1.0 for e in range(60))
    assert CriticalPeriod(init=10, decay=0.5, final=2.0)(2, 2) == [2.5, 2.0]


def test_constant_and_registry():
    assert Constant()(7, 3) == [1.0, 1.0, 1.0]
    assert Constant(weight=0.5, final=2.0)(0, 3) == [0.5, 0.5, 2.0]
    assert set(SCHEDULES.names()) >= {"critical_period", "constant"}
    with pytest.raises(FlowKDError, match="valid: adaptive, constant, critical_period"):
        SCHEDULES.get("cosine")


def _feats(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {"a": torch.randn(8, 12, generator=g), "b": torch.randn(8, 6, generator=g), "c": torch.randn(8, 4, generator=g)}
    s = {"x": torch.randn(8, 10, generator=g), "y": torch.randn(8, 5, generator=g), "z": torch.randn(8, 3, generator=g)}
    return t, s


@pytest.mark.parametrize("epoch", [0, 1, 5, 20])
def test_weighted_sum_pins_pairing_and_weights(epoch):
    t, s = _feats()
    flow = InformationFlowLoss([("a", "x"), ("b", "y"), ("c", "z")], CriticalPeriod())
    terms = flow(t, s, epoch)
    w = 100 * 0.7**epoch
    expected = w * pkt_loss(t["a"], s["x"]) + w * pkt_loss(t["b"], s["y"]) + 1.0 * pkt_loss(t["c"], s["z"])
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["pkt/a~x"].item() == pytest.approx(pkt_loss(t["a"], s["x"]).item(), rel=1e-6)
    assert terms["w/a~x"].item() == pytest.approx(w)
    assert terms["w/c~z"].item() == 1.0
    # pairing in the opposite order is a different loss: the order of pairs is what the user wrote
    rev = InformationFlowLoss([("a", "z"), ("b", "y"), ("c", "x")], CriticalPeriod())(t, s, epoch)
    assert abs(rev["loss"].item() - terms["loss"].item()) > 1e-3


def test_taps_are_derived_from_pairs():
    flow = InformationFlowLoss([("layer1@4", "pool1"), ("layer2@4", "pool2"), ("linear:input", "fc1_relu")])
    assert flow.teacher_taps == ["layer1@4", "layer2@4", "linear:input"]
    assert flow.student_taps == ["pool1", "pool2", "fc1_relu"]


def test_gradients_reach_student_only_through_weighted_pairs():
    t, s = _feats()
    s = {k: v.clone().requires_grad_(True) for k, v in s.items()}
    flow = InformationFlowLoss([("a", "x"), ("c", "z")], Constant(weight=0.0))
    flow(t, s, 0)["loss"].backward()
    assert s["x"].grad is None or torch.count_nonzero(s["x"].grad) == 0
    assert torch.count_nonzero(s["z"].grad) > 0


def test_bad_pairs_and_schedule():
    with pytest.raises(FlowKDError):
        InformationFlowLoss([])
    with pytest.raises(FlowKDError, match="bad tap spec"):
        InformationFlowLoss([("a@", "x")])
    with pytest.raises(FlowKDError, match="1 weights for 2 layer pairs"):  # found when the loss is built
        InformationFlowLoss([("a", "x"), ("b", "y")], schedule=lambda e, n: [1.0])
    flow = InformationFlowLoss([("a", "x"), ("b", "y")], schedule=lambda e, n: [1.0] * min(n, 2 - e))
    t, s = _feats()
    with pytest.raises(FlowKDError, match="1 weights for 2 layer pairs"):  # or at the epoch that goes wrong
        flow(t, s, 1)


def test_adaptive_schedule_ends_the_critical_period_when_mi_flattens():
    from flowkd.schedules import AdaptiveCriticalPeriod

    s = AdaptiveCriticalPeriod(init=100, decay=0.5, tol=0.01, patience=2, final=1.0)
    assert s(0, 3) == [100.0, 100.0, 1.0] and s(7, 3) == [100.0, 100.0, 1.0]  # nothing observed: keep init
    for v in [1.0, 1.5, 1.8, 1.801, 1.802, 1.9]:
        s.observe(v)
    # growth +50%, +20%, +0.06%, +0.06% -> flat for 2 epochs after epoch 4 -> the period ends at epoch 5
    assert s.end() == 5 and s.end(4) is None
    assert [s(e, 2)[0] for e in range(8)] == [100, 100, 100, 100, 100, 50, 25, 12.5]
    assert all(s(e, 2)[1] == 1.0 for e in range(8))
    assert SCHEDULES.get("adaptive") is AdaptiveCriticalPeriod
