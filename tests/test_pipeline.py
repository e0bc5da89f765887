"""End to end on the embedded digits: the CLI, run directories, determinism, resume, failures."""

import json
import subprocess
import sys

import pytest
import torch

from flowkd.cli import main
from helpers import run_args, sets

FAST = [  # a few epochs of every stage: the whole demo pipeline in a couple of seconds
    "stages.teacher.epochs=[2]", "stages.aux_labels.epochs=[1, 1]", "stages.aux_pkt.epochs=[1, 1]",
    "stages.student.epochs=[2, 1]", "stages.student_labels.epochs=[2, 1]", "stages.student_pkt.epochs=[2, 1]",
]


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_writes_checkpoints_metrics_results(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(run_args(out, FAST), capsys)
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == {"teacher", "aux", "student", "student_labels", "student_pkt"}
    for stage in ["teacher", "aux_labels", "aux_pkt", "student", "student_labels", "student_pkt"]:
        assert (out / "checkpoints" / f"{stage}.pt").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    per_stage = {}
    for rec in lines:
        per_stage.setdefault(rec["stage"], []).append(rec["epoch"])
    assert per_stage == {"teacher": [0, 1], "aux_labels": [0, 1], "aux_pkt": [0, 1], "student": [0, 1, 2],
                         "student_labels": [0, 1, 2], "student_pkt": [0, 1, 2]}
    # the critical-period weights are logged per epoch for the student's intermediate pairs, 1 for the last
    student = [r for r in lines if r["stage"] == "student"]
    assert [r["w/pool1~pool1"] for r in student] == pytest.approx([100.0, 70.0, 49.0])
    assert all(r["w/fc1_relu~fc1_relu"] == 1.0 for r in student)
    assert [r["lr"] for r in student] == [1e-2, 1e-2, 1e-3]
    # the aux learns from the teacher's representation only; stage B starts from stage A's weights
    assert res["stages"]["aux_pkt"]["pairs"] == [["fc2_relu", "fc1_relu"]]
    # each stage says how it trained (wall times compare only between like settings): the student cohort of 3
    # side by side on min(3, threads) workers, the single aux_pkt stage on one worker with every thread
    threads = torch.get_num_threads()
    on = res["stages"]["student"]["trained_on"]
    assert on["workers"] == min(3, threads) and on["resumed"] is False and len(on["load_avg"]) == 3
    assert res["stages"]["aux_pkt"]["trained_on"]["workers"] == 1
    assert res["stages"]["aux_pkt"]["trained_on"]["threads_per_worker"] == threads
    for m in res["models"].values():
        assert 0 <= m["cosine"]["map"] <= 100 and 0 <= m["euclidean"]["map"] <= 100
    assert "head_acc" in res["models"]["student_labels"] and "head_acc" not in res["models"]["student"]
    assert (out / "results.md").read_text().startswith("# flowkd demo")
    assert "| student |" in stdout


def test_existing_run_dir_is_refused_and_left_intact(tmp_path, capsys):
    out = tmp_path / "run"
    args = run_args(out, FAST)
    assert run_cli(args, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already holds a run" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_resume_skips_completed_stages(tmp_path, capsys):
    out = tmp_path / "run"
    args = run_args(out, FAST)
    assert run_cli(args, capsys)[0] == 0
    first = json.loads((out / "results.json").read_text())
    (out / "results.json").unlink()
    code, stdout, _ = run_cli(args + ["--resume"], capsys)
    assert code == 0 and stdout.count("resumed from") == 6
    again = json.loads((out / "results.json").read_text())
    assert again["models"]["student"]["cosine"]["map"] == first["models"]["student"]["cosine"]["map"]
    code, _, err = run_cli(args + ["--resume", "--set", "seed=3"], capsys)
    assert code == 2 and "cannot resume with another config: seed was 0" in err


def test_a_run_made_before_an_option_existed_resumes_at_its_default(tmp_path, capsys):
    """A run's saved config lacks the options a later flowkd added (here a stage's views and average_last): it
    trained as their defaults do, so --resume accepts it, unless the config now sets one to something else."""
    out = tmp_path / "run"
    args = run_args(out, FAST)
    assert run_cli(args, capsys)[0] == 0
    state = json.loads((out / "state.json").read_text())
    del state["config"]["fast"]["threads"]
    for st in state["config"]["stages"]:
        del st["views"], st["average_last"]
    (out / "state.json").write_text(json.dumps(state))
    code, stdout, _ = run_cli(args + ["--resume"], capsys)
    assert code == 0 and stdout.count("resumed from") == 6
    assert run_cli(args + ["--resume", "--set", "fast.threads=1"], capsys)[0] == 0  # free to change, as speed is
    code, _, err = run_cli(args + ["--resume", "--set", "stages.student.average_last=2"], capsys)
    assert code == 2 and "cannot resume with another config: stages.student.average_last was 0" in err


def test_demo_is_deterministic_for_a_seed(tmp_path, capsys):
    maps = []
    for i, seed in enumerate([5, 5, 6]):
        code, stdout, _ = run_cli(["demo", "--seed", str(seed), "--out", str(tmp_path / f"d{i}"), "--quiet",
                                   "--no-progress", *sets(FAST)], capsys)
        assert code == 0 and "total time" in stdout
        res = json.loads((tmp_path / f"d{i}" / "results.json").read_text())
        maps.append({k: v["cosine"]["map"] for k, v in res["models"].items()})
    assert maps[0] == maps[1]
    assert maps[0] != maps[2]


@pytest.mark.parametrize("override, message", [
    ("data.batchsize=3", "unknown config key 'data.batchsize'"),
    ("data.batch_size='x'", "config key 'data.batch_size' must be int"),
    ("stages.student.pairs=[['nope', 'pool1']]", "unknown layer 'nope'"),
    ("stages.student.pairs=[['pool1', 'pool9']]", "unknown layer 'pool9' in SmallCNN; closest valid names: pool"),
    ("stages.student.kernel='gauss'", "unknown kernel 'gauss'"),
    ("models.student.arch='resnet999'", "unknown model 'resnet999'"),
    ("models.teacher.weights='/nonexistent/w.pt'", "weights file not found: /nonexistent/w.pt"),
    ("stages.student.lr=[1e30, 1e30]", "student: non-finite loss at epoch 0"),
        ("stages.student.lr=[inf, inf]", "learning rates must be finite numbers > 0"),
    ("data.name='cifar10'", "data.root is required"),
])
def test_bad_input_gives_one_line_and_no_results(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    code, _, err = run_cli(run_args(out, [*FAST, override]), capsys)
    assert code == 2
    assert err.strip().startswith("flowkd: error:") and message in err and len(err.strip().splitlines()) == 1
    if "non-finite" in message:  # a student of a cohort failed in training: the others' results are written
        res = json.loads((out / "results.json").read_text())
        assert "student" in res["failed"] and "student" not in res["models"] and "student_labels" in res["models"]
    else:
        assert not (out / "results.json").exists()
    assert not list(out.rglob("*.tmp"))


def test_missing_config_file(capsys, tmp_path):
    code, _, err = run_cli(["run", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "config file not found" in err


def test_console_script_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "flowkd", "layers", "verytiny"], capture_output=True, text=True)
    assert r.returncode == 0 and "pool1" in r.stdout and "(8, 15, 15)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "flowkd", "models"], capture_output=True, text=True)
    assert r.returncode == 0 and "preact_resnet18" in r.stdout


def test_atomic_writes_have_normal_permissions(tmp_path):
    import os
    import stat

    from flowkd.io import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_safetensors_checkpoints_reload_and_resume(tmp_path, capsys):
    pytest.importorskip("safetensors")
    out = tmp_path / "run"
    args = run_args(out, [*FAST, "weights_format=safetensors"])
    assert main(args) == 0
    ckpt = out / "checkpoints" / "teacher.safetensors"
    assert ckpt.is_file() and not (out / "checkpoints" / "teacher.pt").exists()
    res = json.loads((out / "results.json").read_text())
    # the file alone reproduces the teacher's evaluation
    assert main(["eval", "--model", "mlp", "--width", "2", "--weights", str(ckpt), "--json", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert abs(ev["cosine"]["map"] - res["models"]["teacher"]["cosine"]["map"]) < 1e-6
    # resuming a finished run loads every stage from its .safetensors checkpoint and gives the same results
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert again["models"]["student"]["cosine"]["map"] == res["models"]["student"]["cosine"]["map"]
