"""The data path on a CPU: gather, crop/flip and normalise a batch of 128 CIFAR-sized images, the loader of the
baseline commit (aab464e: padding + 4-index advanced indexing + a flip by torch.where) vs today's (each sample's
view id -> one uint8 gather from a small table), side by side in rotated rounds on one thread, with a check that
every batch is bit-identical.

    python benchmarks/bench_data.py [--rounds 5] [--baseline aab464e]

Writes results/bench_data.json and .md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from flowkd.data import arrays as now  # noqa: E402


def _baseline(commit: str):
    """The baseline commit's data/arrays.py as a module (its relative imports pointed at today's package)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/flowkd/data/arrays.py"],
                         check=True, capture_output=True, text=True).stdout
    src = src.replace("from ..errors import", "from flowkd.errors import")
    path = Path(tempfile.mkdtemp()) / "arrays_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("arrays_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["arrays_baseline"] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


def _epoch_ms(mod, data, batches):
    loader = mod.Loader(data, 128, shuffle=True, augment=True, seed=0)
    t0 = time.perf_counter()
    n = 0
    for _ in loader:
        n += 1
        if n == batches:
            break
    return (time.perf_counter() - t0) * 1000 / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--baseline", default="aab464e")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    base = _baseline(args.baseline)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50000, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (50000,), generator=g)
    d_now = now.ArrayDataset(images, labels, [str(i) for i in range(10)])
    d_base = base.ArrayDataset(images, labels, [str(i) for i in range(10)])
    same = all(torch.equal(a.x, b[0]) for a, b, _ in zip(now.Loader(d_now, 128, shuffle=True, augment=True),
                                                          base.Loader(d_base, 128, shuffle=True, augment=True),
                                                          range(50)))
    times = {"baseline": [], "now": []}
    for r in range(args.rounds):
        order = [("baseline", base, d_base), ("now", now, d_now)]
        for name, mod, data in (order if r % 2 == 0 else order[::-1]):
            times[name].append(_epoch_ms(mod, data, args.batches))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [b / n for b, n in zip(times["baseline"], times["now"])]
    # the floor: reading the batch's bytes once and writing the float batch once (memory traffic, not arithmetic)
    x = images[:128].clone()
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        x.float()
    floor = (time.perf_counter() - t0) * 1000 / reps
    res = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": 1, "torch": torch.__version__,
                    "load_avg_start": load0, "load_avg_end": os.getloadavg()},
        "baseline_commit": args.baseline, "batch": 128, "batches_per_round": args.batches, "rounds": args.rounds,
        "ms_per_batch": times, "median_ms_per_batch": med, "speedup_median_of_rounds": round(statistics.median(ratios), 2),
        "bit_identical_batches": same, "floor_ms_uint8_to_float": round(floor, 3),
        "wall_s": round(time.perf_counter() - t_start, 1), "command": "python benchmarks/bench_data.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = ["# The data path on a CPU: a batch of 128 CIFAR-sized images gathered, cropped/flipped and normalised\n",
          f"`{res['command']}` — {res['machine']['cpu']}, 1 thread, torch {res['machine']['torch']}, load average "
          f"{load0[0]:.1f} at the start and {res['machine']['load_avg_end'][0]:.1f} at the end (the cores were shared "
          f"with other jobs: compare the rows, not the absolute times); {args.rounds} rounds of {args.batches} batches, "
          f"order rotated; wall {res['wall_s']} s.\n",
          "| loader | ms a batch (median) | rounds |", "|---|---:|---|",
          f"| baseline ({args.baseline}): pad + 4-index gather + flip by `where` | {med['baseline']:.2f} | "
          + ", ".join(f"{t:.2f}" for t in times["baseline"]) + " |",
          f"| now: view ids, one uint8 gather | {med['now']:.2f} | " + ", ".join(f"{t:.2f}" for t in times["now"]) + " |",
          "", f"Speed-up (median of the rounds' ratios): **{res['speedup_median_of_rounds']}×**; every batch bit-identical "
          f"to the baseline's: {same}. The floor — converting one uint8 batch to float, the least any path that "
          f"normalises must do — is {floor:.3f} ms on this machine now."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
