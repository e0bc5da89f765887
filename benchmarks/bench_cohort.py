"""Many students in one pass vs one after another, side by side in one process.

The five auxiliary-driven CIFAR-10 students of ``configs/compare_cifar10_aux.toml`` (proposed, ablations a and
c, the adaptive schedule, labels only; the very tiny CNN, batch 128, augmentation) train the same epochs twice:
as one cohort (``cohort = true``: each batch gathered and augmented once, the auxiliary teacher's taps computed
once per batch for the four students that read it) and one stage after another (``cohort = false``), each in
both memory layouts (NCHW, and channels_last: ``fast.channels_last``, the default on a CPU). The training wall
time of each (the stages' time, evaluation excluded) gives the throughput ratios; the final weights of cohort
and sequential are compared per layout (bit-identical on a CPU).

    python benchmarks/bench_cohort.py                          # synthetic 32x32 images, random auxiliary
    python benchmarks/bench_cohort.py --data .devdata/cifar10 --aux .devdata/cifar10_aux_tiny_pkt.pt
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import ROOT, machine, write

from flowkd.config import load_config
from flowkd.data.arrays import ArrayDataset
from flowkd.pipeline import Pipeline


def _data(args):
    if args.data:
        from flowkd.data.readers import load_dataset

        tr, te = load_dataset("cifar10_jpg", args.data)
        return tr.subset(list(range(args.images))), te.subset(list(range(256)))
    g = np.random.default_rng(0)
    classes = [str(c) for c in range(10)]

    def make(n):
        return ArrayDataset(g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n), classes,
                            (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))

    return make(args.images), make(256)


def run(cohort: bool, channels_last: bool, args, data, out: Path) -> tuple[float, dict, Pipeline]:
    sets = [f"cohort={str(cohort).lower()}", "device=cpu", "progress=false", "eval.cost=none", "eval.k=[10]",
            f"models.aux.weights='{args.aux}'", f"fast.channels_last={str(channels_last).lower()}"]
    cfg = load_config(ROOT / "configs" / "compare_cifar10_aux.toml", sets)
    for s in cfg.stages:
        s.epochs, s.lr = [args.epochs], [1e-3]
    p = Pipeline(cfg, out, data=data, log=lambda *a: None)
    t0 = time.perf_counter()
    res = p.run()
    total = time.perf_counter() - t0
    walls = {k: v["wall_s"] for k, v in res["stages"].items()}
    train_s = max(walls.values()) if cohort else sum(walls.values())
    return train_s, {"total_s": round(total, 2), "stage_wall_s": walls}, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of every student")
    ap.add_argument("--data", default="", help="a cifar10_jpg folder (default: synthetic images)")
    ap.add_argument("--aux", default="", help="auxiliary teacher weights (default: its random initialisation)")
    args = ap.parse_args()
    data = _data(args)
    rows, same = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("nchw", "channels_last"):
            weights = {}
            for cohort in (False, True):  # one after another first: any warm-up cost is charged to the baseline
                train_s, info, p = run(cohort, layout == "channels_last", args, data, Path(tmp) / f"{layout}_{cohort}")
                rows[f"{'cohort' if cohort else 'sequential'}_{layout}"] = {"train_s": round(train_s, 2), **info}
                weights[cohort] = {n: {k: v.clone() for k, v in m.state_dict().items()}
                                   for n, m in p.run_models.models.items()}
            same[layout] = all(torch.equal(weights[True][n][k], weights[False][n][k])
                               for n in weights[True] for k in weights[True][n])
    t = {k: v["train_s"] for k, v in rows.items()}
    ratios = {layout: round(t[f"sequential_{layout}"] / t[f"cohort_{layout}"], 3) for layout in ("nchw", "channels_last")}
    overall = t["sequential_nchw"] / t["cohort_channels_last"]
    doc = {"machine": machine(torch.device("cpu")), "images": args.images, "epochs": args.epochs,
           "data": args.data or "synthetic", "aux": args.aux or "random", "students": 5, "runs": rows,
           "throughput_ratio": ratios, "cohort_channels_last_vs_sequential_nchw": round(overall, 3),
           "bit_identical_weights": same}
    m = doc["machine"]
    lines = ["# Cohort vs one after another: five auxiliary-driven CIFAR-10 students (configs/compare_cifar10_aux.toml)", "",
             f"{args.images} training images x {args.epochs} epochs per student, batch 128, augmentation; {doc['data']} images; "
             f"CPU, torch {m['torch']}, {m['cpu_threads']} threads; measured side by side in one process", "",
             "| layout | one after another: training s | one cohort: training s | throughput ratio | weights bit-identical |",
             "|---|---:|---:|---:|---|"]
    for layout in ("nchw", "channels_last"):
        lines.append(f"| {layout} | {t[f'sequential_{layout}']:.1f} | {t[f'cohort_{layout}']:.1f} | "
                     f"**{ratios[layout]:.2f}x** | {same[layout]} |")
    lines += ["", f"cohort in channels_last vs one after another in NCHW (flowkd's earlier CPU default): **{overall:.2f}x**", ""]
    write("cohort", doc, "\n".join(lines))


if __name__ == "__main__":
    main()
