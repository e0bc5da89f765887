"""How long `flowkd demo` takes, as a user runs it, and what it prints: results/bench_demo.json|md.

    python benchmarks/bench_demo.py [--runs 3] [--seed 0]

Each run is a fresh process (`python -m flowkd demo --quiet --out DIR`), timed from its start to its exit, so
the figure includes Python's start-up and the imports. The machine is described as found, with its load
average at the start (on a shared machine the times are upper bounds of what the demo needs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import ROOT, machine, write

ROWS = ["teacher", "aux", "student", "student_labels", "student_pkt"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    walls, cpus, models = [], [], None
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "demo"
            t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-m", "flowkd", "demo", "--quiet", "--seed", str(args.seed),
                            "--out", str(out)], env=env, check=True, capture_output=True)
            walls.append(round(time.perf_counter() - t0, 2))
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(round(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, 2))
            res = json.loads((out / "results.json").read_text())
        got = {k: {"cos_map": round(res["models"][k]["cosine"]["map"], 2),
                   "euc_map": round(res["models"][k]["euclidean"]["map"], 2)} for k in ROWS}
        if models is not None and got != models:
            raise SystemExit("the demo gave other numbers on a rerun with the same seed")
        models = got
    doc = {"command": f"python -m flowkd demo --quiet --seed {args.seed} --out DIR (a fresh process per run)",
           "machine": machine(torch.device("cpu")), "load_average_1min_at_start": load, "runs": args.runs, "wall_s": walls,
           "wall_s_median": statistics.median(walls),
           "cpu_s": cpus, "cpu_s_median": statistics.median(cpus), "load_average_1min_at_end": os.getloadavg()[0], "seed": args.seed, "models": models}
    m = doc["machine"]
    lines = ["# `flowkd demo`: wall time and results", "",
             f"Command: `{doc['command']}`, {args.runs} runs, each timed from process start to exit (Python start-up "
             f"and imports included). Machine: {m.get('cpu_threads')} CPU threads, torch {m.get('torch')}"
             + (f", 1-minute load average {load:.2f} at the start" if load is not None else "")
             + "; the machine is shared with other jobs, so the times are upper bounds.", "",
             f"Wall time per run: {', '.join(f'{w:.1f} s' for w in walls)} (median {doc['wall_s_median']:.1f} s); "
             f"CPU time (user + system) per run: {', '.join(f'{c:.1f} s' for c in cpus)} (median "
             f"{doc['cpu_s_median']:.1f} s), which sharing the machine changes much less than the wall time. "
             f"1-minute load average at the end: {doc['load_average_1min_at_end']:.2f}.", "",
             "| model | cos mAP | euc mAP |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['cos_map']:.2f} | {v['euc_map']:.2f} |" for k, v in models.items()]
    lines += ["", f"Seed {args.seed}; the same numbers on every run (checked)."]
    write("demo", doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
