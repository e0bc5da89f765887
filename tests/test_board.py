"""TensorBoard: a run with `--tensorboard` writes every metrics.jsonl number as a scalar, read back here with
the tensorboard package's own reader; without the package the run stops before any work with one line."""

import json
import sys

import pytest

from flowkd.board import scalars
from flowkd.cli import main
from helpers import run_args

SMALL = ["stages.teacher.epochs=[2]", "stages.aux_labels.epochs=[1]", "stages.aux_labels.lr=[1e-3]",
         "stages.aux_pkt.epochs=[1]", "stages.aux_pkt.lr=[1e-3]", "stages.student.epochs=[2]",
         "stages.student.lr=[1e-3]", "stages.student_labels.epochs=[1]", "stages.student_labels.lr=[1e-3]",
         "stages.student_pkt.epochs=[1]", "stages.student_pkt.lr=[1e-3]", "data.train_subset=200",
         "data.test_subset=100", "eval.cost=none", "eval.models=['student']"]


def test_scalars_flattens_numbers_and_skips_the_rest():
    rec = {"loss": 1.5, "lr": 1e-3, "weights": {"pool1": 100.0, "fc1": 1.0}, "note": "x", "ok": True, "n": 3}
    assert scalars(rec) == {"loss": 1.5, "lr": 1e-3, "weights/pool1": 100.0, "weights/fc1": 1.0, "n": 3.0}


def test_run_writes_the_metrics_as_tensorboard_scalars(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    assert main(run_args(out, SMALL, "--tensorboard")) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    acc = event_accumulator.EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {}
    for r in records:  # every number of every record, tagged <stage>/<key>, at step = epoch
        for key, value in scalars({k: v for k, v in r.items() if k not in ("stage", "epoch")}).items():
            expected.setdefault(f"{r['stage']}/{key}", {})[r["epoch"]] = value
    assert set(expected) == tags
    assert {"student/loss", "student/lr", "teacher/loss"} <= tags
    for tag, by_epoch in expected.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got == pytest.approx(by_epoch, rel=1e-6), tag  # event files hold float32


def test_missing_tensorboard_fails_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it now raises ImportError
    out = tmp_path / "run"
    assert main(run_args(out, SMALL, "--set", "tensorboard=true")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flowkd: error: tensorboard = true needs the tensorboard package")
    assert 'pip install "flowkd[tensorboard]"' in err[-1]
    assert not out.exists()


def test_a_resumed_run_logs_each_epoch_once(tmp_path):
    """A run resumed after its last stage was lost holds every (tag, epoch) once in its event files, with the
    values of metrics.jsonl: the epochs trained again replace the ones logged before (read without TensorBoard's
    own purge of orphaned steps, which would hide a duplicate)."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    assert main(run_args(out, SMALL, "--tensorboard")) == 0
    state = json.loads((out / "state.json").read_text())
    last = list(state["completed"])[-1]  # as if killed before its end: trained again on --resume
    del state["completed"][last]
    (out / "state.json").write_text(json.dumps(state))
    for f in (out / "checkpoints").glob(f"{last}.*"):
        f.unlink()
    assert main(run_args(out, SMALL, "--tensorboard", "--resume")) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["stage"] == last for r in records)
    acc = event_accumulator.EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0},
                                             purge_orphaned_data=False)
    acc.Reload()
    expected = {}
    for r in records:
        for key, value in scalars({k: v for k, v in r.items() if k not in ("stage", "epoch")}).items():
            expected.setdefault(f"{r['stage']}/{key}", []).append((r["epoch"], value))
    assert set(expected) == set(acc.Tags()["scalars"])
    for tag, points in expected.items():
        got = sorted((e.step, e.value) for e in acc.Scalars(tag))
        assert [s for s, _ in got] == sorted(s for s, _ in points), tag  # each epoch once
        assert [v for _, v in got] == pytest.approx([v for _, v in sorted(points)], rel=1e-6), tag
