"""How many intra-op threads a CPU training pass runs on: the cores other processes leave free.

On cores another job keeps busy, a thread of ours waits for its turn at every parallel region's end, and a step
split over more threads than there are free cores ends when the slowest share does: on 2 cores with two other
training processes, the demo's auxiliary stage took 3.7 s on one thread against 12.6 s on two
(``results/bench_demo.md``; ``benchmarks/bench_threads_load.py`` measures it at each load). ``fast.threads =
"auto"`` (the default) therefore trains on the cores that were idle over a short window just before the pass
(``free_cores``: this process is idle then, so only the others count), at least one and at most the threads
torch started with; a number chooses it. When the user has chosen already (``OMP_NUM_THREADS`` or
``MKL_NUM_THREADS`` set), or the device is not a CPU, or the idle time cannot be read (no ``/proc/stat``),
auto changes nothing.
"""

from __future__ import annotations

import os
import time

import torch

from .errors import FlowKDError

__all__ = ["free_cores", "idle_share", "plan_threads", "apply_threads"]

WINDOW_S = 0.25
_START = torch.get_num_threads()  # the threads torch started with: what auto never goes above


def _cpu_times(text: str, cpus: set[int]) -> dict[int, tuple[int, int]]:
    """``{cpu: (idle + iowait jiffies, all jiffies)}`` for ``cpus`` from the text of ``/proc/stat``."""
    out = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            out[int(name[3:])] = (v[3] + v[4], sum(v))
    return out


def idle_share(before: str, after: str, cpus: set[int]) -> float | None:
    """The idle share (0..1 per CPU, summed over ``cpus``) between two ``/proc/stat`` texts; None when no
    time passed on them."""
    a, b = _cpu_times(before, cpus), _cpu_times(after, cpus)
    free = None
    for c in a.keys() & b.keys():
        total = b[c][1] - a[c][1]
        if total > 0:
            free = (free or 0.0) + min(max((b[c][0] - a[c][0]) / total, 0.0), 1.0)
    return free


def free_cores(window_s: float = WINDOW_S) -> float | None:
    """How many of this process's CPUs were idle over ``window_s`` seconds while it slept (Linux, from
    ``/proc/stat``); None where that cannot be read."""
    try:
        cpus = set(os.sched_getaffinity(0))
        with open("/proc/stat") as f:
            before = f.read()
        time.sleep(window_s)
        with open("/proc/stat") as f:
            after = f.read()
    except (OSError, AttributeError):
        return None
    return idle_share(before, after, cpus)


def plan_threads(setting: int | str, device: torch.device, free=None) -> tuple[int, str]:
    """(threads, why) for a training pass: ``setting`` a whole number >= 1, or "auto" (the module's rule;
    ``free``: what measures the idle cores, :func:`free_cores` unless given)."""
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        return setting, "fast.threads"
    if setting != "auto":
        raise FlowKDError(f"fast.threads must be \"auto\" or a whole number >= 1, got {setting!r}")
    if device.type != "cpu":
        return torch.get_num_threads(), "not a CPU"
    chosen = [k for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(k)]
    if chosen:
        return torch.get_num_threads(), f"{chosen[0]} set"
    idle = (free or free_cores)()
    if idle is None:
        return torch.get_num_threads(), "idle time unknown"
    return max(1, min(_START, int(idle + 0.5))), f"{idle:.1f} of {len(os.sched_getaffinity(0))} cores idle"


def apply_threads(setting: int | str, device: torch.device, log, free=None) -> dict:
    """Set torch's intra-op threads for the pass to come by :func:`plan_threads`; one line in ``log`` when auto
    lowers them below what torch started with (not again while they stay there). Returns ``{"threads": n, "why": ...}`` for the stage's
    record."""
    n, why = plan_threads(setting, device, free)
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    if setting == "auto" and n < _START and n != before:
        log(f"other processes keep the cores busy ({why}): training on {n} thread{'s' * (n != 1)} "
            f"(fast.threads = N chooses)")
    return {"threads": n, "why": why}
