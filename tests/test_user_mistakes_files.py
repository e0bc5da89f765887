"""Issue 27, data safety: flowkd never writes over a file it did not make for that purpose (any output flag of
any command) unless --force; one process per run folder; a write that fails leaves nothing half-written."""

import errno
import json
import os

import pytest

from flowkd.cli import main
from helpers import DEMO, ZERO, one_error
from flowkd.rundir import RunLock

ONE = [s.replace("student_labels.epochs=[0, 0]", "student_labels.epochs=[1, 0]") for s in ZERO]



def run_args(out, sets=ZERO, *extra):
    return ["run", DEMO, "--out", str(out), "--no-progress", *extra, *sum((["--set", s] for s in sets), [])]


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("files") / "run"
    assert main(run_args(out, ONE)) == 0
    return out


# ---- any output flag of any command ----------------------------------------------------------------------

def test_export_over_the_runs_own_checkpoint_is_refused(trained, capsys):
    ckpt = trained / "checkpoints" / "student_labels.pt"
    before = snapshot(trained)
    one_error(capsys, main(["export", str(trained), "--model", "student_labels", "--format", "torchscript",
                            "--out", str(ckpt)]), "already exists", "a file of the run in", "--force")
    assert snapshot(trained) == before
    assert main(["eval", "--model", "digits_cnn", "--weights", str(ckpt)]) == 0  # the run still reads


def test_export_over_an_earlier_export_needs_force(trained, tmp_path, capsys):
    out = tmp_path / "s.pt"
    args = ["export", str(trained), "--model", "student_labels", "--out", str(out), "--queries", "20",
            "--database", "50"]
    assert main(args) == 0
    first = out.read_bytes()
    one_error(capsys, main(args), f"--out {out} already exists", "--force")
    assert out.read_bytes() == first
    (tmp_path / "t.pt.json").write_text("my notes")  # the metadata file an export would write beside t.pt
    one_error(capsys, main([*args[:-5], str(tmp_path / "t.pt"), *args[-4:]]), "t.pt.json already exists")
    assert not (tmp_path / "t.pt").exists() and (tmp_path / "t.pt.json").read_text() == "my notes"
    assert main([*args, "--force"]) == 0


@pytest.mark.parametrize("command", [
    lambda f: ["eval", "--model", "digits_cnn", "--json", str(f)],
    lambda f: ["features", DEMO, "--model", "teacher", "--out", str(f), "--set", "models.teacher.arch='mlp'"],
    lambda f: ["init", "--data", "digits", "--teacher", "mlp", "--student", "digits_cnn", "--out", str(f)],
])
def test_every_output_flag_refuses_an_existing_file(tmp_path, capsys, command):
    mine = tmp_path / "mine.npz"
    mine.write_text("my file")
    one_error(capsys, main(command(mine)), "already exists", "--force")
    assert mine.read_text() == "my file"
    assert list(tmp_path.iterdir()) == [mine]


def test_init_with_force_replaces(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("old")
    assert main(["init", "--data", "digits", "--teacher", "mlp", "--student", "digits_cnn", "--out", str(cfg),
                 "--epochs", "1", "--force"]) == 0
    assert "[[stages]]" in cfg.read_text()


# ---- one process per run folder ---------------------------------------------------------------------------

def test_a_run_folder_in_use_is_refused_and_a_dead_holders_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(out)) == 0
    assert not (out / ".lock").exists()  # released at the end
    before = snapshot(out)
    lock = RunLock(out)
    lock.acquire()  # another process (a second open file: flock treats it as another holder)
    try:
        one_error(capsys, main(run_args(out, ZERO, "--resume")), f"{out} is in use by process {os.getpid()}",
                  "one process at a time")
        one_error(capsys, main(run_args(tmp_path / "run", ZERO)), "in use by process")
    finally:
        lock.release()
    assert snapshot(out) == before  # the refused runs wrote nothing
    # a killed process leaves its lock file behind, holding a pid that no longer runs: taken over
    (out / ".lock").write_text(json.dumps({"pid": 2**22 + 17, "host": "elsewhere", "since": "yesterday"}))
    assert main(run_args(out, ZERO, "--resume")) == 0, capsys.readouterr().err
    assert not (out / ".lock").exists()


def test_a_new_folder_refused_under_the_lock_is_not_left_behind(tmp_path, capsys):
    out = tmp_path / "new"
    out.mkdir()
    lock = RunLock(out)
    lock.acquire()
    try:
        one_error(capsys, main(run_args(out)), "in use by process")
    finally:
        lock.release()
    assert list(out.iterdir()) == []


# ---- compare --out ------------------------------------------------------------------------------------

def test_compare_refuses_a_folder_that_is_not_a_comparison_and_repeated_seeds(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    res = tmp_path / "results"
    args = ["compare", DEMO, "--results-dir", str(res), "--quiet", "--no-progress"] + sum((["--set", s] for s in ZERO), [])
    one_error(capsys, main([*args, "--out", str(mine), "--seeds", "0"]), "is not empty and is not a comparison",
              "notes.txt")
    assert snapshot(mine) == {"notes.txt": b"mine"} and not res.exists()
    one_error(capsys, main([*args, "--out", str(tmp_path / "cmp"), "--seeds", "0", "0"]), "seed 0 twice")
    one_error(capsys, main([*args, "--out", str(tmp_path / "cmp"), "--seeds", "-1"]), "--seeds must be a whole number >= 0")
    assert not (tmp_path / "cmp").exists()
    assert main([*args, "--out", str(tmp_path / "cmp"), "--seeds", "0"]) == 0
    one_error(capsys, main([*args, "--out", str(tmp_path / "cmp"), "--seeds", "0"]), "add --reuse")
    assert main([*args, "--out", str(tmp_path / "cmp"), "--seeds", "0", "--reuse"]) == 0  # its own results: replaced
    (res / "compare_mine.md").write_text("my table")
    one_error(capsys, main([*args, "--out", str(tmp_path / "cmp"), "--seeds", "0", "--reuse", "--name", "mine"]),
              "the results file", "compare_mine.md already exists", "choose another --results-dir or --name", "--force")
    assert (res / "compare_mine.md").read_text() == "my table"
    # a finished seed trained by another config is not reused: its numbers are not this config's
    before = snapshot(res)
    one_error(capsys, main([*args, "--out", str(tmp_path / "cmp"), "--seeds", "0", "--reuse",
                            "--set", "stages.student.lr=[0.5, 0.05]"]),
              "cannot reuse seed 0 trained with another config", "stages.student.lr was [0.01, 0.001]",
              "is [0.5, 0.05] now", "another --out")
    assert snapshot(res) == before
    # the keys free to change on --resume (how it shows itself, how often it checkpoints, what it evaluates) are free here
    assert main([*args, "--out", str(tmp_path / "cmp"), "--seeds", "0", "--reuse", "--set", "checkpoint_s=5",
                 "--set", "title=renamed"]) == 0


# ---- a write that fails ---------------------------------------------------------------------------------

def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    import flowkd.io

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(flowkd.io.os, "fsync", full)
    one_error(capsys, main(run_args(tmp_path / "run")), "no space left on the device", "free some space")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))
    assert not (tmp_path / "run" / "config.json").exists()


def test_fetch_into_a_file(tmp_path, capsys):
    f = tmp_path / "data.txt"
    f.write_text("mine")
    one_error(capsys, main(["data", "fetch", "cifar10", "--root", str(f)]), "is a file, not a folder")
    one_error(capsys, main(["data", "fetch", "cifar10", "--root", str(f / "x")]), "is a file")
    assert f.read_text() == "mine"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="permission bits do not stop root")
def test_fetch_into_an_unwritable_place(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        one_error(capsys, main(["data", "fetch", "cifar10", "--root", str(ro / "data")]), "not writable")
    finally:
        ro.chmod(0o700)


def test_demo_into_a_folder_that_is_not_empty_and_features_with_a_wrong_suffix(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    one_error(capsys, main(["demo", "--out", str(tmp_path / "d"), "--quiet"]), "is not empty", "choose a new or empty")
    assert snapshot(tmp_path / "d") == {"keep.txt": b"mine"}
    one_error(capsys, main(["features", DEMO, "--model", "teacher", "--out", str(tmp_path / "f.txt")]),
              "written as .npz or .safetensors")
    one_error(capsys, main(["eval", "--model", "digits_cnn", "--weights", str(tmp_path / "d")]), "is a folder")
