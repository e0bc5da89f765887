"""Many students in one pass (flowkd.cohort): bit-identical to one stage after another on CPU, one teacher
forward per batch for every student that reads it, a failing student does not take the others down, sweeps."""

import json

import pytest
import torch

from flowkd.cli import main
from flowkd.cohort import cohorts, shared_teachers
from flowkd.config import load_config
from flowkd.errors import FlowKDError
from flowkd.io import load_weights
from flowkd.teachers import Batch, SharedTeacher, as_teacher
from helpers import DEMO, run_args

SMALL = ["stages.teacher.epochs=[2]", "stages.aux_labels.epochs=[1, 1]", "stages.aux_pkt.epochs=[1, 1]",
         "stages.student.epochs=[2, 1]", "stages.student_labels.epochs=[1, 2]", "stages.student_pkt.epochs=[2]",
         "stages.student_pkt.lr=[1e-3]", "eval.cost=none"]


def _run(out, *overrides):
    return main(run_args(out, [*SMALL, *overrides]))


def _strip(lines):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in lines]


BF16_SHARED = ("fast.amp=bf16", "stages.student_pkt.teacher=aux")  # two students read the auxiliary: shared


@pytest.mark.parametrize("workers, sets", [(1, ()), (2, ()), (2, BF16_SHARED)])
def test_a_cohort_trains_bit_identically_to_one_stage_after_another(tmp_path, workers, sets):
    """One at a time (at the process's threads), and side by side: two students stepping at once on one
    thread each, against one after another on one thread. Under bf16 autocast the shared teacher's pass, made
    outside the students' steps, runs in their precision as the teacher of a stage of its own does."""
    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    try:
        assert _run(tmp_path / "cohort", f"fast.student_workers={workers}", *sets) == 0
        assert _run(tmp_path / "seq", "cohort=false", *sets) == 0
    finally:
        torch.set_num_threads(threads)
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
        group.append(Stage(f"s{i}", f"s{i}", s, s, None, step, None, flow=flow, teacher_name="t",
                           teacher=step.teacher, teacher_source=teacher))
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    alone = DistillStep(create_model("digits_cnn", in_channels=1, in_size=8), teacher, InformationFlowLoss(taps[2]))
    students[2].load_state_dict(alone.taps.model.state_dict())
    with shared_teachers(group) as shared:
        assert len(shared) == 1 and isinstance(group[0].step.teacher, SharedTeacher)
        teacher.calls = 0
        batch = Batch(x, y)  # a cohort hands every student the same batch
        terms = [st.step(batch) for st in group]
        assert teacher.calls == 1  # one forward for three students
        assert torch.equal(terms[2]["loss"], alone(Batch(x, y))["loss"])  # the same teacher features as a step of its own
    assert all(st.step.teacher is st.teacher for st in group)  # after the cohort: each step reads its own again


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


def _dropout_net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.Linear(32, 10))


def _cohort_of(nets, workers, log):
    """Train ``nets`` (cross-entropy, 2 epochs over 6 fixed batches) as one cohort; their weights."""
    from flowkd.cohort import train_cohort
    from flowkd.loop import Trainer

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(6)]

    def step_of(net):
        return lambda b: {"loss": torch.nn.functional.cross_entropy(net(b.x), b.y)}

    torch.manual_seed(123)  # the dropout draws
    trainers = [Trainer(n, step_of(n), epochs=[2], lr=[1e-2], name=f"s{i}") for i, n in enumerate(nets)]
    assert train_cohort(batches, trainers, show_progress=False, workers=workers, threads=1, log=log) == {}
    return [{k: v.clone() for k, v in n.state_dict().items()} for n in nets]


def test_students_that_draw_random_numbers_step_one_at_a_time_side_by_side(one_thread):
    """Dropout draws from the global generator: side by side the draws would come in a varying order, so
    such a cohort steps one student at a time, in the order of a cohort on one thread (same weights)."""
    said = []
    side = _cohort_of([_dropout_net(i) for i in range(3)], 2, said.append)
    alone = _cohort_of([_dropout_net(i) for i in range(3)], 1, said.append)
    assert len(said) == 1 and "s0, s1, s2 draw(s) random numbers" in said[0]
    for a, b in zip(side, alone):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # students without random draws: side by side, no message, the weights of the one-thread cohort
    plain = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)) for _ in range(3)]
    twins = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)) for _ in range(3)]
    for p, t in zip(plain, twins):
        t.load_state_dict(p.state_dict())
    said.clear()
    side, alone = _cohort_of(plain, 2, said.append), _cohort_of(twins, 1, said.append)
    assert said == []
    for a, b in zip(side, alone):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_students_reading_the_same_teacher_taps_share_the_teachers_side_of_pkt(monkeypatch):
    import flowkd.flow
    from flowkd.flow import InformationFlowLoss
    from flowkd.models import create_model
    from flowkd.steps import DistillStep

    calls = []
    real = flowkd.flow.pairs_target
    monkeypatch.setattr(flowkd.flow, "pairs_target", lambda *a: calls.append(1) or real(*a))
    teacher = _Counting()
    pairs = [("fc1", "pool3"), ("fc2", "fc2")]
    shared = SharedTeacher(as_teacher(teacher, ["fc1", "fc2"]))
    students = [create_model("digits_cnn", in_channels=1, in_size=8) for _ in range(2)]
    steps = [DistillStep(s, shared, InformationFlowLoss(pairs)) for s in students]
    alone = DistillStep(students[0], teacher, InformationFlowLoss(pairs))  # the same student, unshared
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    batch = Batch(x, y)  # one batch for both students (a cohort's)
    terms = [st(batch) for st in steps]
    assert len(calls) == 1  # once for both students
    assert torch.equal(terms[0]["loss"], alone(Batch(x, y))["loss"])  # the same value as a step of its own
    calls.clear()
    steps[1](Batch(torch.randn(16, 1, 8, 8), y))
    assert len(calls) == 1  # a new batch: computed again
    shared.close()
    alone.close()


@pytest.mark.parametrize("value, fragment", [
    ("0", "fast.student_workers must be \"auto\" or a whole number >= 1, got 0"),
    ("'many'", "fast.student_workers must be \"auto\" or a whole number >= 1, got 'many'"),
])
def test_bad_student_workers_are_refused_before_training(tmp_path, capsys, value, fragment):
    assert _run(tmp_path / "r", f"fast.student_workers={value}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_worker_plan():
    from flowkd.cohort import worker_plan

    n = torch.get_num_threads()
    assert worker_plan("auto", 5, torch.device("cpu")) == (min(5, n), n if min(5, n) == 1 else n // min(5, n))
    assert worker_plan(1, 5, torch.device("cpu")) == (1, n)
    assert worker_plan(4, 2, torch.device("cpu"))[0] == 2  # never more workers than students
    assert worker_plan("auto", 5, torch.device("cuda")) == (1, n)  # side by side is a CPU mechanism
    with pytest.raises(FlowKDError, match="on a CPU only"):
        worker_plan(2, 5, torch.device("cuda"))
