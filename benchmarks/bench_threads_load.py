"""fast.threads = "auto" against torch's default, with 0, 1 and 2 other busy processes on the cores.

The other processes are started here (each a 1-thread training loop of a small CNN, as another job would be), so
the load is known; run it with nothing else on the cores (its json records the idle share measured before it
starts). Per load: the very tiny student's information-flow step (bench_step's, float32 channels_last, batch 128,
4 pairs) in a fresh process per thread count (1, and every count up to the cores), and the count flowkd's rule
(``flowkd.threads.plan_threads("auto")``) picks in such a process under that load; rotated rounds, medians.
OMP_WAIT_POLICY=PASSIVE (flowkd's default) throughout.

    python benchmarks/bench_threads_load.py [--rounds 3] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")

BUSY = """
import torch
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1),
                          torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
opt = torch.optim.SGD(net.parameters(), 0.01)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
while True:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
"""


def child(threads: int, steps: int) -> None:
    import torch

    sys.path.insert(0, HERE)
    sys.path.insert(0, SRC)
    import numpy as np
    from bench_step import MEAN, STD, Mode

    from flowkd.data.arrays import ArrayDataset, Loader
    from flowkd.models import create_model
    from flowkd.threads import plan_threads

    picked, why = plan_threads("auto", torch.device("cpu"))  # what auto would train on, here and now
    g = np.random.default_rng(0)
    n = 128 * (steps + 2)
    data = ArrayDataset(g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n),
                        [str(c) for c in range(10)], MEAN, STD)
    batches = [b.x.contiguous(memory_format=torch.channels_last) for b in Loader(data, 128, shuffle=True, augment=True)]
    torch.manual_seed(0)
    mode = Mode("m", create_model("tiny").eval(), create_model("verytiny"), channels_last=True, threads=threads)
    for x in batches[:2]:
        mode.step(x)
    t0 = time.perf_counter()
    for x in batches[2:2 + steps]:
        mode.step(x)
    print(json.dumps({"step_ms": (time.perf_counter() - t0) / steps * 1e3, "auto_picks": picked, "auto_why": why}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.steps)
    sys.path.insert(0, SRC)
    import torch
    from _common import machine, write

    from flowkd.threads import free_cores

    cores = len(os.sched_getaffinity(0))
    idle_before = free_cores(1.0)
    wall = time.perf_counter()
    m = machine(torch.device("cpu"))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env |= {"OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": os.path.abspath(SRC)}
    counts = list(range(1, cores + 1))
    per = {}
    for load in range(cores + 1):
        busy = [subprocess.Popen([sys.executable, "-c", BUSY], env=env | {"OMP_NUM_THREADS": "1"}) for _ in range(load)]
        try:
            time.sleep(3.0 if busy else 0.0)  # the others at work before anything is timed
            for r in range(args.rounds):
                for t in counts[r % len(counts):] + counts[:r % len(counts)]:
                    out = subprocess.run([sys.executable, __file__, "--child", str(t), "--steps", str(args.steps)],
                                         env=env, check=True, capture_output=True, text=True).stdout
                    per.setdefault((load, t), []).append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for p in busy:
                p.kill()
                p.wait()
    rows, runs = [], {}
    for load in range(cores + 1):
        ms = {t: statistics.median(x["step_ms"] for x in per[(load, t)]) for t in counts}
        picks = [x["auto_picks"] for t in counts for x in per[(load, t)]]
        pick = statistics.mode(picks)
        best = min(ms, key=ms.get)
        runs[str(load)] = {"step_ms": {str(t): round(v, 2) for t, v in ms.items()}, "auto_picks": picks,
                           "auto_pick": pick, "fastest": best, "auto_vs_default": round(ms[cores] / ms[pick], 3),
                           "rounds": {str(t): per[(load, t)] for t in counts}}
        rows.append(f"| {load} | " + " | ".join(f"{ms[t]:.1f}" for t in counts)
                    + f" | {pick} ({picks.count(pick)} of {len(picks)}) | {best} | {ms[cores] / ms[pick]:.2f}x |")
    doc = {"machine": m, "cores": cores, "idle_cores_before": idle_before, "rounds": args.rounds, "steps": args.steps,
           "runs": runs, "wall_s": round(time.perf_counter() - wall, 1),
           "command": f"python benchmarks/bench_threads_load.py --rounds {args.rounds} --steps {args.steps}"}
    table = "\n".join([
        "# Training threads with other processes on the cores: fast.threads = \"auto\" vs torch's default", "",
        f"machine: {m['device']}, torch {m['torch']}, {cores} cores ({idle_before:.2f} idle over 1 s before the "
        f"measurement); the other processes are 1-thread CNN training loops started by the benchmark; a fresh "
        f"process per thread count, rotated rounds, medians of {args.rounds} ({args.steps} steps each); "
        f"OMP_WAIT_POLICY=PASSIVE; wall {doc['wall_s']} s", "",
        "| other busy processes | " + " | ".join(f"step ms, {t} thread{'s' * (t > 1)}" for t in counts)
        + " | auto picks (of the processes) | fastest | auto vs torch's default (all cores) |",
        "|---:|" + "---:|" * len(counts) + "---|---:|---:|", *rows, "",
        "The step: the very tiny student's information-flow step on batch 128 (4 pairs, the tiny auxiliary's forward, "
        "Adam). torch's default is as many threads as cores."]) + "\n"
    write("threads_load", doc, table)


if __name__ == "__main__":
    main()
