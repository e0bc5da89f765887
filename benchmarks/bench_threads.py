"""Intra-op threads and OpenMP's wait policy on shared CPU cores: the very tiny student's information-flow
step (bench_step's, float32 channels_last) and a ResNet-18 forward on 64 images, each in a fresh process per
setting (libgomp reads OMP_WAIT_POLICY once, when torch loads), 1 or 2 threads x the policy unset (libgomp
spins a while at every barrier: today's default) or PASSIVE (flowkd's default since it sets it on import);
processes run after one another in rotated rounds; medians.

    python benchmarks/bench_threads.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def child(threads: int, steps: int) -> None:
    import torch  # first, so the environment given decides the wait policy (flowkd would set PASSIVE)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_step import MEAN, STD, Mode

    import numpy as np
    from flowkd.data.arrays import ArrayDataset, Loader
    from flowkd.models import create_model

    g = np.random.default_rng(0)
    data = ArrayDataset(g.integers(0, 256, (128 * (steps + 2), 3, 32, 32), dtype=np.uint8), g.integers(0, 10, 128 * (steps + 2)),
                        [str(c) for c in range(10)], MEAN, STD)
    batches = [b.x.contiguous(memory_format=torch.channels_last) for b in Loader(data, 128, shuffle=True, augment=True)]
    torch.manual_seed(0)
    mode = Mode("m", create_model("tiny").eval(), create_model("verytiny"), channels_last=True, threads=threads)
    for x in batches[:2]:
        mode.step(x)
    t0 = time.perf_counter()
    for x in batches[2:2 + steps]:
        mode.step(x)
    step_ms = (time.perf_counter() - t0) / steps * 1e3
    net = create_model("preact_resnet18").eval()
    x = torch.randn(64, 3, 32, 32)
    with torch.inference_mode():
        net(x)
        t0 = time.perf_counter()
        net(x)
        r18 = 64 / (time.perf_counter() - t0)
    print(json.dumps({"step_ms": step_ms, "resnet18_images_per_s": r18}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.steps)
    sys.path.insert(0, ROOT_SRC)
    import torch
    from _common import machine, write

    wall = time.perf_counter()
    settings = [(p, t) for p in ("unset", "PASSIVE") for t in (1, 2)]
    per = {s: [] for s in settings}
    m = machine(torch.device("cpu"))
    for r in range(args.rounds):
        for s in settings[r % len(settings):] + settings[:r % len(settings)]:
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"PYTHONPATH": os.path.abspath(ROOT_SRC)}
            if s[0] != "unset":
                env["OMP_WAIT_POLICY"] = s[0]
            out = subprocess.run([sys.executable, __file__, "--child", str(s[1]), "--steps", str(args.steps)], env=env,
                                 check=True, capture_output=True, text=True).stdout
            per[s].append(json.loads(out.strip().splitlines()[-1]) | {"loadavg": round(os.getloadavg()[0], 2)})
    base = ("unset", 1)
    rows, runs = [], {}
    for s in settings:
        step = statistics.median(x["step_ms"] for x in per[s])
        r18 = statistics.median(x["resnet18_images_per_s"] for x in per[s])
        ratio = statistics.median(a["step_ms"] / b["step_ms"] for a, b in zip(per[base], per[s]))
        runs[f"{s[0]}, {s[1]} thread(s)"] = {"step_ms": round(step, 2), "step_speed_vs_unset_1": round(ratio, 3),
                                             "resnet18_images_per_s": round(r18, 1), "rounds": per[s]}
        rows.append(f"| {s[0]} | {s[1]} | {step:.1f} | {ratio:.2f}x | {r18:.1f} |")
    doc = {"machine": m, "rounds": args.rounds, "steps": args.steps, "runs": runs, "wall_s": round(time.perf_counter() - wall, 1),
           "command": f"python benchmarks/bench_threads.py --rounds {args.rounds} --steps {args.steps}"}
    table = "\n".join([
        "# Threads and OpenMP's wait policy on shared cores", "",
        f"machine: {m['device']}, torch {m['torch']}, {os.cpu_count()} cores, load average at the start {m['loadavg']} "
        f"(each process's in the json); a fresh process per setting, rotated rounds, medians of {args.rounds}; wall {doc['wall_s']} s", "",
        "| OMP_WAIT_POLICY | intra-op threads | student step ms (batch 128, 4 pairs) | step speed vs unset, 1 thread | ResNet-18 images/s (batch 64, float32) |",
        "|---|---:|---:|---:|---:|", *rows]) + "\n"
    write("threads", doc, table)


if __name__ == "__main__":
    main()
