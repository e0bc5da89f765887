"""Many students in one pass (flowkd.cohort): bit-identical to one stage after another on CPU, one teacher
forward per batch for every student that reads it, a failing student does not take the others down, sweeps."""

import json

import pytest
import torch

from flowkd.cli import main
from flowkd.cohort import SharedTeacher, cohorts, share_teachers
from flowkd.config import load_config
from flowkd.io import load_weights
from helpers import DEMO, run_args

SMALL = ["stages.teacher.epochs=[2]", "stages.aux_labels.epochs=[1, 1]", "stages.aux_pkt.epochs=[1, 1]",
         "stages.student.epochs=[2, 1]", "stages.student_labels.epochs=[1, 2]", "stages.student_pkt.epochs=[2]",
         "stages.student_pkt.lr=[1e-3]", "eval.cost=none"]


def _run(out, *overrides):
    return main(run_args(out, [*SMALL, *overrides]))


def _strip(lines):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in lines]


def test_a_cohort_trains_bit_identically_to_one_stage_after_another(tmp_path):
    assert _run(tmp_path / "cohort") == 0
    assert _run(tmp_path / "seq", "cohort=false") == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("cohort", "seq"))
    # the cohorts did form: the three students in one pass, the teacher with the auxiliary's labels stage
    assert a["stages"]["student"]["cohort"] == ["student", "student_labels", "student_pkt"]
    assert a["stages"]["teacher"]["cohort"] == ["teacher", "aux_labels"]
    assert "cohort" not in b["stages"]["student"]
    for stage in a["stages"]:
        wa = load_weights(tmp_path / "cohort" / "checkpoints" / f"{stage}.pt")
        wb = load_weights(tmp_path / "seq" / "checkpoints" / f"{stage}.pt")
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (stage, k)
    for name in a["models"]:
        for m in ("cosine", "euclidean"):
            assert a["models"][name][m] == b["models"][name][m], (name, m)
    la = _strip(json.loads(x) for x in (tmp_path / "cohort" / "metrics.jsonl").read_text().splitlines())
    lb = _strip(json.loads(x) for x in (tmp_path / "seq" / "metrics.jsonl").read_text().splitlines())
    key = lambda r: (r["stage"], r["epoch"])  # noqa: E731
    assert sorted(la, key=key) == sorted(lb, key=key)


class _Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 16)
        self.fc2 = torch.nn.Linear(16, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_a_shared_teacher_runs_once_per_batch_for_every_student(tmp_path):
    from flowkd.flow import InformationFlowLoss
    from flowkd.models import create_model
    from flowkd.stages import Stage
    from flowkd.steps import DistillStep

    teacher = _Counting()
    students = [create_model("digits_cnn", in_channels=1, in_size=8) for _ in range(3)]
    taps = [[("fc1", "fc1_relu")], [("fc2", "fc2")], [("fc1", "pool3"), ("fc2", "fc2")]]
    group = []
    for i, (s, pairs) in enumerate(zip(students, taps)):
        flow = InformationFlowLoss(pairs)
        step = DistillStep(s, teacher, flow)
        group.append(Stage(f"s{i}", f"s{i}", s, s, None, step, None, flow=flow, teacher_name="t", teacher=teacher))
    shared = share_teachers(group)
    assert len(shared) == 1 and isinstance(group[0].step.teacher, SharedTeacher)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    alone = DistillStep(create_model("digits_cnn", in_channels=1, in_size=8), teacher, InformationFlowLoss(taps[2]))
    students[2].load_state_dict(alone.taps.model.state_dict())
    teacher.calls = 0
    terms = [st.step(x, y) for st in group]
    assert teacher.calls == 1  # one forward for three students
    assert torch.equal(terms[2]["loss"], alone(x, y)["loss"])  # the same teacher features as a step of its own
    shared[0].remove()


def test_cohorts_group_consecutive_independent_stages(tmp_path):
    cfg = load_config(DEMO)
    from flowkd.pipeline import Pipeline

    p = Pipeline(cfg, tmp_path / "unused", log=lambda *a: None)
    p.load()
    stages = p.build()
    try:
        assert [[s.name for s in g] for g in cohorts(stages)] == [
            ["teacher", "aux_labels"], ["aux_pkt"], ["student", "student_labels", "student_pkt"]]
    finally:
        for s in stages:
            s.close()


def test_one_failing_student_stops_with_its_line_and_the_others_are_written(tmp_path, capsys):
    code = _run(tmp_path / "r", "stages.student_pkt.lr=[1e30]")
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("flowkd: error")]
    assert code == 2 and len(err) == 1
    assert "student_pkt: non-finite loss at epoch 0" in err[0]
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert "student_pkt" in res["failed"] and "student_pkt" not in res["models"]
    assert res["models"]["student"]["cosine"]["map"] > 0 and res["models"]["student_labels"]["cosine"]["map"] > 0
    assert not (tmp_path / "r" / "checkpoints" / "student_pkt.pt").exists()


def test_a_sweep_trains_one_student_per_value(tmp_path):
    sets = ["stages.student.schedule={ name = 'critical_period', init = 100.0, decay = [0.5, 0.9] }"]
    assert _run(tmp_path / "sweep", *sets) == 0
    res = json.loads((tmp_path / "sweep" / "results.json").read_text())
    names = [n for n in res["models"] if n.startswith("student[")]
    assert names == ["student[decay=0.5]", "student[decay=0.9]"]
    assert res["stages"]["student[decay=0.5]"]["cohort"][:2] == ["student[decay=0.5]", "student[decay=0.9]"]
    assert res["models"]["student[decay=0.9]"]["label"].endswith("(decay=0.9)")
    # each swept student is exactly the plain run with that value
    assert _run(tmp_path / "plain", "stages.student.schedule.decay=0.9") == 0
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert res["models"]["student[decay=0.9]"]["cosine"] == plain["models"]["student"]["cosine"]
    lines = [json.loads(x) for x in (tmp_path / "sweep" / "metrics.jsonl").read_text().splitlines()]
    w = {r["epoch"]: r["w/pool1~pool1"] for r in lines if r["stage"] == "student[decay=0.5]"}
    assert w == {0: 100.0, 1: 50.0, 2: 25.0}


@pytest.mark.parametrize("sets, fragment", [
    (["stages.student.schedule={ name = 'critical_period', decay = [0.5, 0.9], init = [1.0, 2.0] }"],
     "one option per stage"),
    (["stages.aux_labels.ce_weight=[0.1, 0.2]"], "model 'aux' is trained or read by other stages"),
    (["stages.student.schedule={ name = 'critical_period', decay = [] }"], "empty list"),
])
def test_bad_sweeps_are_refused(tmp_path, capsys, sets, fragment):
    assert _run(tmp_path / "r", *sets) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
