"""Shared bits of the benchmarks: machine facts, timing, and writing results/bench_*.json|md atomically."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from flowkd.io import atomic_write_json, atomic_write_text  # noqa: E402
from flowkd.pipeline import machine_info  # noqa: E402

# "today's code" of the CPU speed work (issue 28): the commit its branch started from; benchmarks load a module
# of it next to the current one and time both in the same run
BASELINE = "aab464e"


def machine(device: torch.device) -> dict:
    """machine_info plus this machine's load averages (1, 5, 15 min) when the measurement started: the cores
    are shared, so absolute times move with the load; ratios measured side by side move much less."""
    return machine_info(device) | {"loadavg": [round(x, 2) for x in os.getloadavg()],
                                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}


def baseline(relpath: str, name: str):
    """The module at ``src/flowkd/<relpath>`` as it was at BASELINE, imported inside its package (so relative
    imports resolve to the current sibling modules) under a private name."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE}:src/flowkd/{relpath}"], check=True,
                         capture_output=True, text=True).stdout
    package = "flowkd." + ".".join(Path(relpath).parent.parts) if Path(relpath).parent.parts else "flowkd"
    spec = importlib.util.spec_from_loader(f"{package}._baseline_{name}", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = package
    exec(compile(src, f"{BASELINE}:src/flowkd/{relpath}", "exec"), mod.__dict__)
    return mod


def cpu_peak_macs(fma_per_cycle: int = 16) -> tuple[float, float]:
    """(one core's float32 multiply-add peak per second, its clock in MHz): ``fma_per_cycle`` float32
    multiply-adds a cycle (16: two 256-bit FMA pipes, as AMD Zen 4 runs AVX-512; 32 on a CPU with two 512-bit
    FMA units) times the clock /proc/cpuinfo reports (0 when it reports none)."""
    mhz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    except OSError:
        pass
    return fma_per_cycle * mhz * 1e6, mhz


def side_by_side(fns: dict, rounds: int, inner: int = 1) -> dict:
    """Time each callable ``inner`` times per round, the order rotated every round; per name: the median
    seconds of one call and the round-by-round times (so a load spike hits every variant alike)."""
    names = list(fns)
    per = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(inner):
                fns[k]()
            per[k].append((time.perf_counter() - t0) / inner)
    return {k: {"median_s": statistics.median(v), "rounds_s": [round(x, 6) for x in v]} for k, v in per.items()}


def paired_ratio(a: list, b: list) -> float:
    """Median over rounds of a[i] / b[i] (each round times both)."""
    return statistics.median(x / y for x, y in zip(a, b))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int = 1):
    """(best wall seconds over ``repeat`` runs, last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def write(name: str, doc: dict, table: str) -> None:
    res = ROOT / "results"
    atomic_write_json(res / f"bench_{name}.json", doc)
    atomic_write_text(res / f"bench_{name}.md", table)
    print(table)
    print(f"wrote results/bench_{name}.json|md")
