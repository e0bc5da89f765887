"""Shared bits of the benchmarks: machine facts, timing, and writing results/bench_*.json|md atomically."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from flowkd.io import atomic_write_json, atomic_write_text  # noqa: E402
from flowkd.pipeline import machine_info as machine  # noqa: E402,F401


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
