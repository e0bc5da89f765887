"""Many students in one pass vs one after another, side by side in one process.

The five auxiliary-driven CIFAR-10 students of ``configs/compare_cifar10_aux.toml`` (proposed, ablations a and
c, the adaptive schedule, labels only; the very tiny CNN, batch 128, augmentation) train the same epochs three
ways, in each memory layout (NCHW, and channels_last: ``fast.channels_last``, the default on a CPU):

- one after another (``cohort = false``): the baseline;
- one cohort, one student at a time (``fast.student_workers = 1``): each batch gathered and augmented once,
  the auxiliary teacher's taps and its side of PKT computed once per batch for the students that read them;
- one cohort, side by side (``fast.student_workers = "auto"``, the default): the same sharing, and on a CPU
  the students step at the same time, one worker thread each.

A short warm-up run comes first (one-time costs: imports, the first optimiser), then ``--repeats`` rounds of
the three, each round in a rotated order; the table gives each way's median training time (the stages' wall
time, evaluation excluded) and the throughput ratios of the medians. Weights: the one-at-a-time cohort is
compared with one after another at the same threads; the side-by-side cohort (its students' operations on
``threads // workers`` threads) with one after another run at that many threads (an extra, untimed run).

    python benchmarks/bench_cohort.py                          # synthetic 32x32 images, random auxiliary
    python benchmarks/bench_cohort.py --data .devdata/cifar10 --aux .devdata/cifar10_aux_tiny_pkt.pt
    python benchmarks/bench_cohort.py --data .devdata/cifar10 --aux .devdata/cifar10_aux_tiny_pkt.pt \
        --images 50000 --epochs 1 --name cohort_full      # whole epochs: results/bench_cohort_full.md

With 4,096 images an epoch is ~2 s side by side, and what every epoch pays once (the adaptive schedule's probe
on 500 images, checkpoints, the first and last batches' idle worker) weighs several times more than in a real
epoch of 50,000 images.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import ROOT, machine, write

from flowkd.cohort import worker_plan
from flowkd.config import load_config
from flowkd.data.arrays import ArrayDataset
from flowkd.pipeline import Pipeline

WAYS = {"sequential": ["cohort=false"], "cohort_one_at_a_time": ["fast.student_workers=1"],
        "cohort_side_by_side": ["fast.student_workers='auto'"]}


def _data(args):
    if args.data:
        from flowkd.data.readers import load_dataset

        tr, te = load_dataset("cifar10_jpg", args.data)
        return tr.subset(list(range(min(args.images, len(tr))))), te.subset(list(range(256)))
    g = np.random.default_rng(0)
    classes = [str(c) for c in range(10)]

    def make(n):
        return ArrayDataset(g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n), classes,
                            (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))

    return make(args.images), make(256)


def run(way: list[str], channels_last: bool, epochs: int, args, data, out: Path) -> tuple[float, dict]:
    """(training seconds, final weights by model) of one run of the comparison's five students."""
    sets = [*way, "device=cpu", "progress=false", "eval.cost=none", "eval.k=[10]", "eval.models=['labels']",
            f"models.aux.weights='{args.aux}'",
            f"fast.channels_last={str(channels_last).lower()}"]
    cfg = load_config(ROOT / "configs" / "compare_cifar10_aux.toml", sets)
    for s in cfg.stages:
        s.epochs, s.lr = [epochs], [1e-3]
    p = Pipeline(cfg, out, data=data, log=lambda *a: None)
    res = p.run()
    walls = [v["wall_s"] for v in res["stages"].values()]
    train_s = sum(walls) if "cohort=false" in way else max(walls)  # a cohort's stages share one wall time
    weights = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in p.run_models.models.items()}
    return train_s, weights


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of every student")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the three ways (medians reported)")
    ap.add_argument("--data", default="", help="a cifar10_jpg folder (default: synthetic images)")
    ap.add_argument("--aux", default="", help="auxiliary teacher weights (default: its random initialisation)")
    ap.add_argument("--layouts", nargs="+", default=["nchw", "channels_last"], choices=["nchw", "channels_last"])
    ap.add_argument("--name", default="cohort", help="results/bench_NAME.json|md")
    args = ap.parse_args()
    data = _data(args)
    warm = (data[0].subset(list(range(min(1024, len(data[0]))))), data[1])  # one-time costs, on a small share
    threads = torch.get_num_threads()
    workers, per_worker = worker_plan("auto", 5, torch.device("cpu"))
    rows, checks = {}, {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for layout in args.layouts:
            cl = layout == "channels_last"
            run(WAYS["cohort_side_by_side"], cl, 1, args, warm, tmp / f"warm_{layout}")
            times = {w: [] for w in WAYS}
            weights = {}
            names = list(WAYS)
            for r in range(args.repeats):
                for w in names[r % 3:] + names[:r % 3]:  # rotated: no way always runs first or last
                    s, weights[w] = run(WAYS[w], cl, args.epochs, args, data, tmp / f"{layout}_{w}_{r}")
                    times[w].append(round(s, 3))
                    print(f"{layout:13s} {w:22s} round {r + 1}: {s:6.2f} s", flush=True)
            torch.set_num_threads(per_worker)
            try:
                _, at_worker_threads = run(WAYS["sequential"], cl, args.epochs, args, data, tmp / f"{layout}_ref")
            finally:
                torch.set_num_threads(threads)
            med = {w: statistics.median(v) for w, v in times.items()}
            rows[layout] = {"train_s": times, "median_s": med,
                            "ratio_one_at_a_time": round(med["sequential"] / med["cohort_one_at_a_time"], 3),
                            "ratio_side_by_side": round(med["sequential"] / med["cohort_side_by_side"], 3)}
            checks[layout] = {
                "one_at_a_time_vs_sequential": same(weights["cohort_one_at_a_time"], weights["sequential"]),
                f"side_by_side_vs_sequential_at_{per_worker}_thread(s)": same(weights["cohort_side_by_side"],
                                                                               at_worker_threads)}
    overall = (rows["nchw"]["median_s"]["sequential"] / rows["channels_last"]["median_s"]["cohort_side_by_side"]
               if len(rows) == 2 else None)
    doc = {"machine": machine(torch.device("cpu")), "images": args.images, "epochs": args.epochs,
           "repeats": args.repeats, "data": args.data or "synthetic", "aux": Path(args.aux).name if args.aux else "random",
           "students": 5, "workers": workers, "threads_per_worker": per_worker, "runs": rows,
           "bit_identical_weights": checks,
           "side_by_side_channels_last_vs_sequential_nchw": round(overall, 3) if overall else None,
           "bench_wall_s": round(time.perf_counter() - t_start, 1)}
    m = doc["machine"]
    lines = ["# Cohort vs one after another: five auxiliary-driven CIFAR-10 students (configs/compare_cifar10_aux.toml)", "",
             f"{args.images} training images x {args.epochs} epochs per student, batch 128, augmentation; {doc['data']} "
             f"images; CPU, torch {m['torch']}, {threads} threads; medians of {args.repeats} rounds, measured side by side "
             f"in one process (side by side: {workers} workers x {per_worker} thread(s))", "",
             "| layout | one after another s | cohort, one at a time s | ratio | cohort, side by side s | ratio | "
             "weights bit-identical |", "|---|---:|---:|---:|---:|---:|---|"]
    for layout, r in rows.items():
        md, c = r["median_s"], checks[layout]
        lines.append(f"| {layout} | {md['sequential']:.2f} | {md['cohort_one_at_a_time']:.2f} | {r['ratio_one_at_a_time']:.2f}x | "
                     f"{md['cohort_side_by_side']:.2f} | **{r['ratio_side_by_side']:.2f}x** | one at a time = one after "
                     f"another: {list(c.values())[0]}; side by side = one after another at {per_worker} thread(s): "
                     f"{list(c.values())[1]} |")
    if overall:
        lines += ["", f"side by side in channels_last vs one after another in NCHW: **{overall:.2f}x**"]
    lines += ["", f"Every round's times: `results/bench_{args.name}.json` (`runs`).", ""]
    write(args.name, doc, "\n".join(lines))


if __name__ == "__main__":
    main()
