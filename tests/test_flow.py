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


def test_a_pair_may_name_its_own_loss_pkt_then_kd_on_the_logits(tmp_path):
    """``pairs = [[t, s], [t, s, "kd"]]``: the first pair is the stage's PKT, the second Hinton KD (its default
    T = 4), weighted by the schedule; checked against loop references written in the tests (test_pkt, test_baselines)."""
    from test_baselines import ref_kd
    from test_pkt import ref_pkt

    import tomllib
    from importlib import resources

    from flowkd.config import config_from_dict
    from flowkd.pipeline import Pipeline

    data = tomllib.loads(resources.files("flowkd").joinpath("configs/digits_demo.toml").read_text())
    for st in data["stages"]:
        if st["name"] == "student":
            st.pop("pairs_from")
            st["pairs"] = [["fc1_relu", "fc1_relu"], ["fc2", "fc2", "kd"]]
    p = Pipeline(config_from_dict(data), tmp_path / "unused", log=lambda *a: None)
    p.load()
    stages = p.build()
    try:
        flow = next(st for st in stages if st.name == "student").flow
        assert [type(l).__name__ for l in flow.pair_losses] == ["PKTLoss", "HintonKD"]
        assert flow.pair_losses[1].temperature == 4.0
        g = torch.Generator().manual_seed(0)
        t = {"fc1_relu": torch.rand(6, 16, generator=g), "fc2": torch.randn(6, 10, generator=g) * 3}
        s = {"fc1_relu": torch.rand(6, 8, generator=g), "fc2": torch.randn(6, 10, generator=g) * 3}
        terms = flow(t, s, epoch=2)
        pkt = ref_pkt(t["fc1_relu"], s["fc1_relu"], "combined", "jeffreys")
        kd = ref_kd(t["fc2"], s["fc2"], 4.0)
        assert terms["pkt/fc1_relu~fc1_relu"].item() == pytest.approx(pkt, rel=1e-4)
        assert terms["kd/fc2~fc2"].item() == pytest.approx(kd, rel=1e-4)
        assert terms["loss"].item() == pytest.approx(100 * 0.7**2 * pkt + kd, rel=1e-4)
    finally:
        for st in stages:
            st.close()


def test_a_pair_naming_an_unknown_loss_or_four_items_is_one_line():
    import tomllib
    from importlib import resources

    from flowkd.config import config_from_dict

    data = tomllib.loads(resources.files("flowkd").joinpath("configs/digits_demo.toml").read_text())
    st = next(s for s in data["stages"] if s["name"] == "student")
    st.pop("pairs_from")
    st["pairs"] = [["fc1_relu", "fc1_relu", "kdd"]]
    with pytest.raises(FlowKDError, match=r"pair 1 names the loss 'kdd'; valid: .*kd"):
        config_from_dict(data)
    st["pairs"] = [["fc1_relu", "fc1_relu", "kd", "x"]]
    with pytest.raises(FlowKDError, match=r"\[teacher tap, student tap, loss\]"):
        config_from_dict(data)
