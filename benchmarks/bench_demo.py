"""``flowkd demo`` end to end, today's code (the baseline commit's src/, from git) vs now, now with a checkpoint
after every epoch (the default before ``checkpoint_s``), now with one intra-op thread (OMP_NUM_THREADS=1), and that with bf16 autocast (its mAPs next to float32's, same seed), run
after one another in rotated rounds on this machine (OMP_WAIT_POLICY / OMP_NUM_THREADS of the caller dropped). Per run: the wall
time of the command, each stage group's wall time and the evaluation's (the cost columns' export and latency
timings are part of it), from the run's results.json.

    python benchmarks/bench_demo.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BASELINE, ROOT, machine, write

import torch


def run_demo(src: Path, env_extra: dict, args: list) -> dict:
    with tempfile.TemporaryDirectory(prefix="flowkd-bench-demo-") as out:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
        env |= {"PYTHONPATH": str(src)} | env_extra
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flowkd", "demo", "--out", out, "--quiet", "--no-progress", *args], env=env,
                       check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        r = json.loads((Path(out) / "results.json").read_text())
    groups = {}
    for name, st in r["stages"].items():
        groups.setdefault(st["wall_s"], []).append(name)
    return {"wall_s": round(wall, 2), "stages_s": {"+".join(v): k for k, v in groups.items()},
            "eval_s": r["eval_wall_s"], "cos_map": {k: round(v["cosine"]["map"], 2) for k, v in r["models"].items()},
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    wall = time.perf_counter()
    m = machine(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="flowkd-baseline-") as base:
        subprocess.run(f"git -C {ROOT} archive {BASELINE} src | tar -x -C {base}", shell=True, check=True)
        variants = {f"today (commit {BASELINE})": (Path(base) / "src", {}, []), "now": (ROOT / "src", {}, []),
                    "now, checkpoint_s=0 (a checkpoint after every epoch)": (ROOT / "src", {}, ["--set", "checkpoint_s=0"]),
                    "now, OMP_NUM_THREADS=1": (ROOT / "src", {"OMP_NUM_THREADS": "1"}, []),
                    "now, OMP_NUM_THREADS=1, fast.amp=bf16": (ROOT / "src", {"OMP_NUM_THREADS": "1"}, ["--set", "fast.amp=bf16"])}
        names = list(variants)
        runs = {k: [] for k in names}
        for r in range(args.rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                runs[k].append(run_demo(*variants[k]))
                print(k, runs[k][-1], flush=True)
    today = names[0]
    rows, summary = [], {}
    for k in names:
        med = statistics.median(x["wall_s"] for x in runs[k])
        ev = statistics.median(x["eval_s"] for x in runs[k])
        ratio = statistics.median(a["wall_s"] / b["wall_s"] for a, b in zip(runs[today], runs[k]))
        summary[k] = {"wall_s": med, "eval_s": ev, "speedup_vs_today": round(ratio, 3)}
        stages = "; ".join(f"{g} {statistics.median(x['stages_s'][g] for x in runs[k]):.1f}" for g in runs[k][0]["stages_s"])
        rows.append(f"| {k} | {med:.1f} | {ratio:.2f}x | {ev:.1f} | {stages} |")
    doc = {"machine": m, "baseline_commit": BASELINE, "rounds": args.rounds, "runs": runs, "summary": summary,
           "target_wall_s": 12, "wall_s": round(time.perf_counter() - wall, 1),
           "command": f"python benchmarks/bench_demo.py --rounds {args.rounds}"}
    table = "\n".join([
        "# `flowkd demo` end to end: today's code vs now", "",
        f"machine: {m['device']}, torch {m['torch']}, {m['cpu_threads']} CPU threads, load average at the start {m['loadavg']} "
        f"(shared cores; each run's own in the json); medians of {args.rounds} rounds, order rotated; wall {doc['wall_s']} s", "",
        "| code | demo wall s | speed-up (median of per-round ratios) | evaluation s (incl. cost columns) | stage groups s |",
        "|---|---:|---:|---:|---|", *rows, "", "cos mAP (%) of the last round's runs, seed 0:", "",
        "| code | " + " | ".join(runs[today][-1]["cos_map"]) + " |", "|---|" + "---:|" * len(runs[today][-1]["cos_map"]),
        *[f"| {k} | " + " | ".join(f"{v:.2f}" for v in runs[k][-1]["cos_map"].values()) + " |" for k in names]]) + "\n"
    write("demo", doc, table)


if __name__ == "__main__":
    main()
