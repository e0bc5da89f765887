"""A stage that learns from several teachers: a pair's teacher side ``"model/tap"`` reads another model than the
stage's ``teacher`` (issue 29: the intermediate pairs from an auxiliary, the last from the big teacher itself)."""

import tomllib

import pytest
import torch

from flowkd import FlowKDError
from flowkd.cohort import cohorts
from flowkd.config import config_from_dict
from flowkd.pipeline import Pipeline
from flowkd.stages import Stage
from flowkd.teachers import Batch, JointTeacher
from helpers import DEMO_TEXT

MIXED = [["pool1", "pool1"], ["pool2", "pool2"], ["pool3", "pool3"], ["teacher/fc2_relu", "fc1_relu"]]


def _demo(pairs=MIXED, **models):
    data = tomllib.loads(DEMO_TEXT)
    st = next(s for s in data["stages"] if s["name"] == "student")
    st.pop("pairs_from")
    st["pairs"] = pairs
    for name, fields in models.items():
        data["models"][name].update(fields)
        data["data"]["augment"] = data["data"].get("augment", True) or "views" in fields
        for s in data["stages"]:  # a model served from a bank of views is frozen: its own stages switched off
            if s["model"] == name and "views" in fields:
                s["epochs"] = [0] * len(s["epochs"])
    return data


def _hooked(model, module_names, x):
    """Module outputs by forward hooks, flattened per sample: an independent read of a network's layers."""
    got, handles = {}, []
    for name in module_names:
        mod = dict(model.named_modules())[name]
        handles.append(mod.register_forward_hook(lambda m, i, o, name=name: got.__setitem__(name, o.flatten(1))))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return got


def _build(tmp_path, data):
    p = Pipeline(config_from_dict(data), tmp_path / "unused", log=lambda *a: None)
    p.load()
    return p, p.build()


def test_each_pair_reads_its_own_teacher(tmp_path):
    p, stages = _build(tmp_path, _demo())
    try:
        st = next(s for s in stages if s.name == "student")
        assert st.learns_from == ("aux", "teacher") and st.info["teachers"] == ["aux", "teacher"]
        assert isinstance(st.teacher, JointTeacher) and st.teacher_source is None  # not shared with a cohort
        batch = next(iter(st.loader))
        x = batch.x
        got = st.teacher(batch)
        run = p.run_models
        aux = _hooked(run.models["aux"], ["pool1", "pool2", "pool3"], x)
        big = _hooked(run.models["teacher"], ["fc2_relu"], x)
        assert set(got) == {"pool1", "pool2", "pool3", "teacher/fc2_relu"}
        for tap in ("pool1", "pool2", "pool3"):
            torch.testing.assert_close(got[tap].flatten(1), aux[tap])
        torch.testing.assert_close(got["teacher/fc2_relu"], big["fc2_relu"])
        assert got["teacher/fc2_relu"].shape[1] == 512 and got["pool3"].shape[1] != 512
        terms = st.step(Batch(x, batch.y, batch.index))
        assert set(k for k in terms if k.startswith("pkt/")) == {
            "pkt/pool1~pool1", "pkt/pool2~pool2", "pkt/pool3~pool3", "pkt/teacher/fc2_relu~fc1_relu"}
    finally:
        for s in stages:
            s.close()


def test_a_banked_teacher_and_a_live_one_see_the_same_pixels(tmp_path):
    """The big teacher from a bank of views, the auxiliary live: the loader serves the bank's views, so the live
    auxiliary runs on exactly the pixels the banked values were computed on."""
    data = _demo(teacher={"views": 2, "bank": str(tmp_path / "banks"), "bank_precision": "fp32"})
    p, stages = _build(tmp_path, data)
    try:
        p.run_models.ensure_banks(lambda *a: None)
        st = next(s for s in stages if s.name == "student")
        assert st.info["teacher_views"] == 2 and st.loader.views is not None
        for batch in list(st.loader)[:2]:
            assert batch.view is not None
            x = batch.x
            got = st.teacher(batch)
            big = _hooked(p.run_models.models["teacher"], ["fc2_relu"], x)
            aux = _hooked(p.run_models.models["aux"], ["pool3"], x)
            torch.testing.assert_close(got["teacher/fc2_relu"].float(), big["fc2_relu"], rtol=2e-3, atol=2e-3)  # float16
            torch.testing.assert_close(got["pool3"].flatten(1), aux["pool3"])
    finally:
        for s in stages:
            s.close()


def test_a_stage_reading_a_model_is_not_in_a_cohort_with_the_stage_training_it():
    from types import SimpleNamespace

    loader = SimpleNamespace(data=None, batch_size=8, shuffle=True, augment=True, pad=4, seed=0, drop_last=False,
                             channels_last=False, rank=0, world=1, views=None)  # one stream of batches for all

    def stage(name, model, teacher="", teachers=()):
        return Stage(name, model, None, None, loader, None, None, teacher_name=teacher, teacher_names=teachers)

    grouped = cohorts([stage("a", "aux"), stage("s", "student", "big", ("big", "aux"))])
    assert [[s.name for s in g] for g in grouped] == [["a"], ["s"]]
    grouped = cohorts([stage("a", "other"), stage("s", "student", "big", ("big", "aux"))])
    assert [[s.name for s in g] for g in grouped] == [["a", "s"]]


@pytest.mark.parametrize("pairs, models, message", [
    ([["nobody/fc2_relu", "fc1_relu"]], {}, "a pair reads 'nobody'/..., but there is no model 'nobody'"),
    ([["student/fc1_relu", "fc1_relu"]], {}, "the model this stage trains"),
    (MIXED, {"teacher": {"views": 2}, "aux": {"views": 4}}, "serve different views"),
    (MIXED, {"teacher": {"views": 2, "view_seed": 1}, "aux": {"views": 2}}, "give them the same view_seed"),
])
def test_mistakes_are_one_line(pairs, models, message):
    data = _demo(pairs, **models)
    with pytest.raises(FlowKDError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        config_from_dict(data)


def test_an_unknown_tap_of_the_other_teacher_names_that_teacher(tmp_path):
    with pytest.raises(FlowKDError) as e:
        _build(tmp_path, _demo([["pool1", "pool1"], ["teacher/fc9", "fc1_relu"]]))
    assert "fc9" in str(e.value)


# ---- several teachers averaged in one pair: "a+b" (issue 29: two auxiliaries averaged) -------------------------

def _ref_pair(teachers, student):
    """PKT (combined kernel, Jeffreys) of ``student`` against the mean of the teachers' similarity distributions,
    entry by entry (test_pkt's naive reference)."""
    from test_pkt import ref_div, ref_kernel

    total = 0.0
    for k in ("cosine", "student_t"):
        ps = [ref_kernel(t.double().tolist(), k) for t in teachers]
        p = [[sum(rows[i][j] for rows in ps) / len(ps) for j in range(len(ps[0]))] for i in range(len(ps[0]))]
        total += ref_div(p, ref_kernel(student.double().tolist(), k), "jeffreys")
    return total


def test_a_pair_averaging_teachers_matches_the_naive_reference():
    from flowkd import InformationFlowLoss
    from flowkd.schedules import Constant

    g = torch.Generator().manual_seed(0)
    t = {"a": torch.randn(6, 5, generator=g), "m/b": torch.randn(6, 7, generator=g), "c": torch.randn(6, 3, generator=g)}
    s = {"s1": torch.randn(6, 4, generator=g, requires_grad=True), "s2": torch.randn(6, 2, generator=g)}
    flow = InformationFlowLoss([("a+m/b", "s1"), ("c", "s2")], Constant(1.0, 1.0))
    assert flow.teacher_taps == ["a", "m/b", "c"]
    terms = flow(t, s, epoch=0)
    assert terms["pkt/a+m/b~s1"].item() == pytest.approx(_ref_pair([t["a"], t["m/b"]], s["s1"]), rel=1e-5)
    assert terms["pkt/c~s2"].item() == pytest.approx(_ref_pair([t["c"]], s["s2"]), rel=1e-5)
    # the student's gradient against central differences of the reference
    terms["loss"].backward()
    grad = s["s1"].grad.clone()
    x = s["s1"].detach().double()
    for i, j in ((0, 0), (3, 2), (5, 3)):
        h = 1e-6
        up, down = x.clone(), x.clone()
        up[i, j] += h
        down[i, j] -= h
        fd = (_ref_pair([t["a"], t["m/b"]], up) - _ref_pair([t["a"], t["m/b"]], down)) / (2 * h)
        assert grad[i, j].item() == pytest.approx(fd, rel=1e-3, abs=1e-7)


def test_a_stage_averages_two_teachers_in_its_last_pair(tmp_path):
    pairs = MIXED[:3] + [["fc1_relu+teacher/fc2_relu", "fc1_relu"]]
    p, stages = _build(tmp_path, _demo(pairs))
    try:
        st = next(s for s in stages if s.name == "student")
        assert st.learns_from == ("aux", "teacher")
        batch = next(iter(st.loader))
        got = st.teacher(batch)
        assert set(got) == {"pool1", "pool2", "pool3", "fc1_relu", "teacher/fc2_relu"}
        aux = _hooked(p.run_models.models["aux"], ["fc1_relu"], batch.x)["fc1_relu"]
        big = _hooked(p.run_models.models["teacher"], ["fc2_relu"], batch.x)["fc2_relu"]
        student = _hooked(p.run_models.models["student"], ["fc1_relu"], batch.x)["fc1_relu"]
        terms = st.flow(got, {"fc1_relu": student, **{k: v for k, v in got.items() if k.startswith("pool")}}, epoch=0)
        assert terms["pkt/fc1_relu+teacher/fc2_relu~fc1_relu"].item() == pytest.approx(
            _ref_pair([aux, big], student), rel=1e-4)
    finally:
        for s in stages:
            s.close()


@pytest.mark.parametrize("pairs, message", [
    ([["pool1", "pool1"], ["fc1_relu+teacher/fc2_relu", "fc1_relu", "kd"]], "averages several teachers ('+'), which only the pkt loss can"),
    ([["pool1", "pool1"], ["fc1_relu+", "fc1_relu"]], "bad teacher side 'fc1_relu+'"),
])
def test_averaging_mistakes_are_one_line(pairs, message):
    with pytest.raises(FlowKDError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        config_from_dict(_demo(pairs))
