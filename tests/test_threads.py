"""fast.threads (flowkd.threads): a CPU pass trains on the cores other processes leave idle, unless told."""

import json

import pytest
import torch

from flowkd import threads as T
from flowkd.cli import main
from flowkd.errors import FlowKDError
from helpers import one_error, run_args

CPU = torch.device("cpu")


def _stat(*cpus):
    """A /proc/stat text: the aggregate line, then one line per (user, system, idle, iowait) jiffies."""
    lines = ["cpu  1 2 3 4 5 6 7 8 0 0"]
    for i, (user, system, idle, iowait) in enumerate(cpus):
        lines.append(f"cpu{i} {user} 0 {system} {idle} {iowait} 0 0 0 0 0")
    return "\n".join(lines + ["intr 123", "ctxt 456"]) + "\n"


def test_idle_share_sums_each_cpus_idle_and_iowait_share():
    before = _stat((100, 50, 1000, 10), (200, 0, 500, 0))
    # cpu0: 100 jiffies pass, 60 idle + 10 iowait -> 0.7; cpu1: 40 pass, 0 idle -> 0.0
    after = _stat((120, 60, 1060, 20), (240, 0, 500, 0))
    assert T.idle_share(before, after, {0, 1}) == pytest.approx(0.7)
    assert T.idle_share(before, after, {0}) == pytest.approx(0.7)  # only the process's CPUs count
    assert T.idle_share(before, after, {1}) == pytest.approx(0.0)
    assert T.idle_share(before, before, {0, 1}) is None  # no time passed


@pytest.fixture
def auto_allowed(monkeypatch):
    """No thread count chosen by the environment (the tests' conftest sets OMP_NUM_THREADS)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(T, "_START", 4)
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("idle, expect", [(0.0, 1), (0.4, 1), (1.4, 1), (1.6, 2), (2.9, 3), (7.5, 4)])
def test_auto_trains_on_the_idle_cores_at_least_one_at_most_the_start(auto_allowed, idle, expect):
    n, why = T.plan_threads("auto", CPU, free=lambda: idle)
    assert n == expect and "idle" in why


def test_auto_leaves_the_threads_alone_when_chosen_or_unknown(auto_allowed, monkeypatch):
    now = torch.get_num_threads()
    assert T.plan_threads("auto", CPU, free=lambda: None) == (now, "idle time unknown")
    assert T.plan_threads("auto", torch.device("cuda"), free=lambda: 0.0) == (now, "not a CPU")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert T.plan_threads("auto", CPU, free=lambda: 0.0) == (now, "OMP_NUM_THREADS set")
    assert T.plan_threads(3, CPU, free=lambda: 0.0) == (3, "fast.threads")  # a number is obeyed


@pytest.mark.parametrize("bad", ["all", 0, -1, True, 1.5])
def test_bad_thread_settings_are_refused(bad):
    with pytest.raises(FlowKDError, match="fast.threads"):
        T.plan_threads(bad, CPU)


def test_apply_sets_the_threads_and_says_so_once_when_it_lowers_them(auto_allowed):
    said = []
    got = T.apply_threads("auto", CPU, said.append, free=lambda: 1.0)
    assert got == {"threads": 1, "why": "1.0 of " + str(len(T.os.sched_getaffinity(0))) + " cores idle"}
    assert torch.get_num_threads() == 1
    assert len(said) == 1 and "training on 1 thread" in said[0] and "fast.threads" in said[0]
    T.apply_threads("auto", CPU, said.append, free=lambda: 1.2)  # still busy: not said again
    assert len(said) == 1
    T.apply_threads("auto", CPU, said.append, free=lambda: 8.0)  # the others are gone: back up, silently
    assert torch.get_num_threads() == 4 and len(said) == 1


SMALL = ["stages.teacher.epochs=[1]", "stages.aux_labels.epochs=[1, 0]", "stages.aux_pkt.epochs=[1, 0]",
         "stages.student.epochs=[1, 0]", "stages.student_labels.epochs=[1, 0]", "stages.student_pkt.epochs=[1, 0]",
         "eval.cost=none"]


def test_a_run_records_the_threads_each_pass_trained_on(tmp_path, auto_allowed, monkeypatch, capsys):
    monkeypatch.setattr(T, "free_cores", lambda window_s=T.WINDOW_S: 1.0)
    assert main(run_args(tmp_path / "auto", SMALL)) == 0
    res = json.loads((tmp_path / "auto" / "results.json").read_text())
    for name, st in res["stages"].items():
        how = st["trained_on"]
        assert how["threads_by"].startswith("1.0 of") and how["workers"] * how["threads_per_worker"] == 1, name
    out = capsys.readouterr().out
    assert out.count("training on 1 thread") == 1  # said once, though each pass chose again
    assert main(run_args(tmp_path / "two", [*SMALL, "fast.threads=2"])) == 0
    res = json.loads((tmp_path / "two" / "results.json").read_text())
    assert {st["trained_on"]["threads_by"] for st in res["stages"].values()} == {"fast.threads"}
    assert res["stages"]["student"]["trained_on"]["workers"] == 2  # two threads: the cohort steps side by side


@pytest.mark.parametrize("value", ["0", "'many'", "true"])
def test_a_bad_fast_threads_is_one_line(tmp_path, capsys, value):
    one_error(capsys, main(run_args(tmp_path / "r", [f"fast.threads={value}"])), "fast.threads")
    assert not (tmp_path / "r").exists()
