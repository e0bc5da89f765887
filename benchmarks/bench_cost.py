"""What the CIFAR-10 teacher, auxiliary and student cost to run on this machine's CPU (1 thread).

Rows: the PreAct ResNet-18 teacher, the auxiliary "tiny" CNN (conv 16/32/64, fc 128) and the "very tiny"
student (conv 8/16/32, fc 64), all on 3x32x32 images, through ``flowkd.cost.model_cost``: parameters, MACs per
image (PyTorch's FlopCounterMode, FLOPs / 2), state_dict and ONNX sizes, and the median warm latency of 1 image
and of a batch of 256 on one CPU thread under PyTorch eager and ONNX Runtime. Cost does not depend on the
weights' values; the shared trained weights (.devdata/*.pt) are loaded when present, random ones otherwise.
The compression lines use the CIFAR-10 retrieval mAPs measured earlier (results/cifar10.json,
results/cifar10_teacher_eval.json) when those files are there.

    python benchmarks/bench_cost.py [--repeats-budget 2.0] [--batch 256] [--devdata DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from _common import ROOT, machine, write

from flowkd.cost import MACS_NOTE, model_cost  # noqa: E402
from flowkd.io import load_weights  # noqa: E402
from flowkd.models import create_model  # noqa: E402
from flowkd.report import COST_NOTE, compression_summary, cost_cells, cost_header  # noqa: E402

ROWS = [  # name, label, arch, width, weights file, (results file, run, model) of its measured mAP
    ("teacher", "teacher (PreAct ResNet-18)", "preact_resnet18", 1.0, "cifar10_preact_resnet18.pt"),
    ("aux", "auxiliary (tiny: conv 16/32/64, fc 128)", "tiny", 1.0, "cifar10_aux_tiny_pkt.pt"),
    ("student", "student (very tiny: conv 8/16/32, fc 64)", "verytiny", 1.0, None),
]


def measured_maps() -> dict:
    """Cosine mAPs of the CIFAR-10 runs in results/ (teacher: flowkd eval; aux / student: student_cpu run)."""
    maps = {}
    t = ROOT / "results" / "cifar10_teacher_eval.json"
    if t.is_file():
        maps["teacher"] = json.loads(t.read_text())["cosine"]["map"]
    c = ROOT / "results" / "cifar10.json"
    if c.is_file():
        for row in json.loads(c.read_text())["rows"]:
            if row["run"] == "student_cpu" and row["model"] in ("aux", "student"):
                maps[row["model"]] = row["cos_map"]
    return maps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per measurement (at least 5 runs)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--devdata", default=os.environ.get("FLOWKD_DEVDATA", str(Path("/work/main/.devdata"))))
    args = ap.parse_args()
    devdata = Path(args.devdata)
    maps = measured_maps()
    models, weights_used = {}, {}
    t0 = time.perf_counter()
    for name, label, arch, width, wfile in ROWS:
        torch.manual_seed(0)
        model = create_model(arch, width=width)
        w = devdata / wfile if wfile else None
        if w is not None and w.is_file():
            model.load_state_dict(load_weights(w))
            weights_used[name] = w.name  # the file's name: where it lives on the measuring machine says nothing
        else:
            weights_used[name] = "random"
        t1 = time.perf_counter()
        cost = model_cost(model, (3, 32, 32), batch=args.batch, budget_s=args.budget)
        print(f"{name}: {cost['macs'] / 1e6:.2f} MMACs, {cost['latency_ms']} ({time.perf_counter() - t1:.0f} s)", flush=True)
        models[name] = {"label": label, "arch": arch, "width": width, "params": cost["params"], "cost": cost,
                        **({"cosine": {"map": maps[name]}} if name in maps else {})}
    info = machine(torch.device("cpu"))
    summary = compression_summary({"models": models})
    head = ["model", "params", *cost_header(), "ONNX size", "cos mAP"]
    lines = ["# Cost of the CIFAR-10 models (3×32×32 input), 1 CPU thread", "",
             f"machine: {info['platform']}, {os.cpu_count()} CPU cores (shared with other jobs while measuring), "
             f"torch {info['torch']}; weights: {', '.join(f'{k} {v}' for k, v in weights_used.items())}", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, r in models.items():
        c = r["cost"]
        lines.append(f"| {r['label']} | {r['params']:,} | " + " | ".join(cost_cells(c))
                     + f" | {c.get('onnx_bytes', 0) / 1024:,.1f} KiB | "
                     + (f"{r['cosine']['map']:.2f}" if "cosine" in r else "—") + " |")
    lines += ["", COST_NOTE, MACS_NOTE + ".",
              "cos mAP: CIFAR-10 retrieval measured earlier (results/cifar10.json: the student_cpu run; "
              "results/cifar10_teacher_eval.json) — not re-measured here.", ""]
    lines += [f"- {s}" for s in summary]
    doc = {"machine": {**info, "cpu_cores": os.cpu_count()}, "weights": weights_used, "batch": args.batch,
           "budget_s": args.budget, "models": models, "compression": summary,
           "wall_s": round(time.perf_counter() - t0, 1)}
    write("cost", doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
