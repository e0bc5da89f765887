"""Exact resume: a run killed with SIGKILL mid-stage continues from its last complete epoch and ends with
the same metrics as an uninterrupted run; checkpoints holding pickled code are refused."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from flowkd.cli import main
from helpers import run_args

SETS = ["stages.teacher.epochs=[2]", "stages.aux_labels.epochs=[1, 1]", "stages.aux_pkt.epochs=[1, 1]",
        "stages.student.epochs=[30, 10]", "stages.student_labels.epochs=[1, 1]", "stages.student_pkt.epochs=[1, 1]",
        "eval.models=['student', 'aux']", "progress=false", "checkpoint_s=0"]


def _args(out, *extra):
    return run_args(out, SETS, *extra)


ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # same threads everywhere: same float sums


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "flowkd", *args], env=ENV, capture_output=True, text=True)


def test_sigkill_mid_stage_then_resume_matches_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    assert _cli(*_args(ref)).returncode == 0
    reference = json.loads((ref / "results.json").read_text())

    out = tmp_path / "killed"
    env = ENV
    proc = subprocess.Popen([sys.executable, "-m", "flowkd", *_args(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "checkpoints" / "student.partial.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and torch.load(partial, weights_only=True)["epoch"] >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists() and not list(out.rglob("*.tmp"))
    epochs_done = torch.load(partial, weights_only=True)["epoch"]
    assert 3 <= epochs_done < 39

    r = _cli(*_args(out, "--resume"))
    assert r.returncode == 0, r.stderr
    assert f"[student] resuming after epoch {epochs_done}" in r.stdout
    resumed = json.loads((out / "results.json").read_text())
    for name in ("student", "aux"):
        assert resumed["models"][name]["cosine"]["map"] == reference["models"][name]["cosine"]["map"]
        assert resumed["models"][name]["euclidean"]["map"] == reference["models"][name]["euclidean"]["map"]
    ref_lines = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    new_lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # every epoch once, same values (the students of a cohort log epoch by epoch, interleaved; a resumed run
    # first keeps each stage's completed epochs, so the order of the lines may differ)
    key = lambda r: (r["stage"], r["epoch"])  # noqa: E731
    strip = lambda rs: sorted(({k: v for k, v in r.items() if k != "time_s"} for r in rs), key=key)  # noqa: E731
    assert strip(new_lines) == strip(ref_lines)
    assert len({key(r) for r in new_lines}) == len(new_lines)
    assert not partial.exists()


def test_checkpoint_with_pickled_code_is_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"weight": Evil()}, bad)
    code = main(["eval", "--model", "digits_cnn", "--weights", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot read weights {bad}" in err and "pwned" not in err


def test_a_trainer_state_resumes_the_whole_stage():
    """Trainer.state_dict() is the stage's whole training state: a fresh trainer (fresh model, another random
    state) loaded with it ends where an uninterrupted one does, with every epoch's record and the training time
    of both segments; its weights, the dropout draws and the records are the uninterrupted run's."""
    from flowkd import SupervisedStep, train
    from flowkd.data.arrays import ArrayDataset, Loader

    def setup():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                  torch.nn.Linear(12, 3))
        g = torch.Generator().manual_seed(1)
        data = ArrayDataset(torch.randint(0, 256, (60, 1, 4, 4), dtype=torch.uint8, generator=g),
                            torch.arange(60) % 3, list("abc"))
        return net, SupervisedStep(net), Loader(data, 16, shuffle=True, augment=True, pad=1, seed=2)

    kw = dict(epochs=[2, 2], lr=[1e-2, 1e-3], show_progress=False, average=2)
    net, step, loader = setup()
    whole = train(net, loader, step, **kw)
    saved = {}
    net1, step1, loader1 = setup()
    train(net1, loader1, step1, **kw, checkpoint=lambda t: t.done == 2 and saved.update(t.state_dict()))
    net2, step2, loader2 = setup()
    torch.manual_seed(99)  # whatever the random state now: the saved one is restored
    final = {}
    resumed = train(net2, loader2, step2, **kw, resume=saved, checkpoint=lambda t: final.update(t.state_dict()))
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    for k, v in net.state_dict().items():
        assert torch.equal(v, net2.state_dict()[k]), k
    assert saved["epoch"] == 2 and len(saved["records"]) == 3 and final["epoch"] == 3
    assert final["train_s"] > saved["train_s"] > 0  # the stage's time: both segments


def test_checkpoints_every_checkpoint_s_seconds_of_training(monkeypatch):
    """``checkpoint_s``: a checkpoint after the first epoch that ends at least that many seconds of training after
    the last one (0: after every epoch). A clock that moves 10 s per batch, one batch an epoch, 25 s: epochs 2
    (30 s after the start) and 5 (30 s after epoch 2), nothing after epoch 7 (20 s)."""
    import types
    from flowkd import SupervisedStep, train
    from flowkd import trainer as trainer_mod
    from flowkd.data.arrays import ArrayDataset, Loader

    clock = [0.0]
    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    inner = SupervisedStep(net)

    def step(batch):
        clock[0] += 10.0
        return inner(batch)

    data = ArrayDataset(torch.randint(0, 256, (16, 1, 4, 4), dtype=torch.uint8), torch.arange(16) % 3, list("abc"))
    for every, expected in ((25.0, [2, 5]), (0.0, list(range(8))), (1e9, [])):
        saved = []
        train(net, Loader(data, 16, shuffle=True), step, epochs=[8], lr=[1e-3], show_progress=False,
              checkpoint=lambda t: saved.append((t.done, t.train_s)), checkpoint_s=every)
        assert [e for e, _ in saved] == expected, every
        assert all(s == 10.0 * (e + 1) for e, s in saved)


def test_checkpoint_s_is_range_checked(tmp_path, capsys):
    assert main(run_args(tmp_path / "r", ["checkpoint_s=-1"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flowkd: error:") and "checkpoint_s" in err[-1] and ">= 0" in err[-1]


def test_a_resume_keeps_the_flow_log_of_the_kept_epochs_only(tmp_path):
    """The epochs after a stage's last checkpoint are trained again and log again: ``reset_metrics`` keeps of
    flow.jsonl the lines of the epochs it keeps (and drops a line cut short by the kill)."""
    from flowkd.rundir import RunDir

    run = RunDir(tmp_path / "run", {}, resume=True)
    run.path.mkdir()
    lines = [{"stage": "a", "epoch": 0, "mi": 1}, {"stage": "a", "epoch": 1, "mi": 2}, {"stage": "b", "epoch": 0, "mi": 3},
             {"stage": "b", "epoch": 1, "mi": 4}, {"stage": "b", "epoch": 2, "mi": 5}]
    (run.path / "flow.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"stage": "b", "ep')
    kept = [{"stage": "a", "epoch": 0}, {"stage": "a", "epoch": 1}, {"stage": "b", "epoch": 0}]  # b saved after epoch 0
    run.reset_metrics(kept)
    assert [json.loads(x)["mi"] for x in (run.path / "flow.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()] == kept
