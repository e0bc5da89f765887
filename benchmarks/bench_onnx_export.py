"""What an ONNX export costs: ``torch.onnx.export(dynamo=True)`` (which builds torchlib's table of ONNX translations
again for every model) against ``flowkd.onnx_io.to_onnx`` (the same steps, the table built once per process), for
the models a ``flowkd demo`` run exports for its cost columns and the CIFAR-10 student, in one process, rotated
rounds. Both start from the same ``torch.export`` program (the trace is not timed: both paths share it).

A run that exports N architectures pays N x (table + export) the public way and table + N x export flowkd's way;
the table's build is timed on its own (``_registry.cache_clear()`` before each). What is left of an export is
torch's own work (``ExportedProgram.run_decompositions`` and the translation), fixed per call.

    python benchmarks/bench_onnx_export.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from _common import machine, write

from flowkd import onnx_io  # noqa: E402
from flowkd.models import create_model  # noqa: E402
from flowkd.onnx_io import ImageEncoder, to_onnx, trace_encoder  # noqa: E402

# the demo's three architectures (8x8 digits, 1 channel) and the CIFAR-10 student
MODELS = {"demo teacher (mlp x2)": ("mlp", dict(width=2.0, in_channels=1, in_size=8)),
          "demo auxiliary (digits_cnn x2)": ("digits_cnn", dict(width=2.0, in_channels=1, in_size=8)),
          "demo student (digits_cnn)": ("digits_cnn", dict(in_channels=1, in_size=8)),
          "CIFAR-10 student (verytiny)": ("verytiny", dict())}


def programs():
    out = {}
    for label, (arch, kw) in MODELS.items():
        model = create_model(arch, num_classes=10, **kw).eval()
        c, s = kw.get("in_channels", 3), kw.get("in_size", 32)
        example = torch.rand(2, c, s, s)
        out[label] = (trace_encoder(ImageEncoder(model, None), example), example)
    return out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    m = machine(torch.device("cpu"))
    progs = programs()
    names = ["public", "flowkd"]
    public = {k: [] for k in progs}
    ours = {k: [] for k in progs}
    table_s = []
    for r in range(args.rounds):
        for way in names[r % 2:] + names[:r % 2]:
            if way == "public":
                for k, (p, x) in progs.items():
                    public[k].append(timed(lambda: torch.onnx.export(
                        p, (x,), dynamo=True, input_names=["images"], output_names=["output"], verbose=False)))
            else:
                onnx_io._registry.cache_clear()
                table_s.append(timed(lambda: onnx_io.translation_table(None)))
                for k, (p, x) in progs.items():
                    ours[k].append(timed(lambda: to_onnx(p, x, ["images"], ["output"], None)))
    med = statistics.median
    table = med(table_s)
    rows = {k: {"public_s": round(med(public[k]), 3), "flowkd_s": round(med(ours[k]), 3)} for k in progs}
    demo = [k for k in progs if k.startswith("demo")]
    demo_public = sum(rows[k]["public_s"] for k in demo)
    demo_ours = table + sum(rows[k]["flowkd_s"] for k in demo)
    doc = {"machine": m, "rounds": args.rounds, "table_s": round(table, 3), "models": rows,
           "demo": {"public_s": round(demo_public, 3), "flowkd_s": round(demo_ours, 3),
                    "speedup": round(demo_public / demo_ours, 2)},
           "raw": {"public": public, "flowkd": ours, "table_s": table_s},
           "wall_s": round(time.perf_counter() - t0, 1)}
    lines = [
        "# ONNX export: torch.onnx.export against flowkd's to_onnx (torchlib's table built once per process)", "",
        f"machine: {m['device']}, torch {m['torch']}, {m['cpu_threads']} CPU threads, load average at the start "
        f"{m['loadavg']} (shared cores); medians of {args.rounds} rounds, order rotated; wall {doc['wall_s']} s", "",
        "| model | torch.onnx.export s | to_onnx s (table built) | saved s |", "|---|---:|---:|---:|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v['public_s']:.2f} | {v['flowkd_s']:.2f} | {v['public_s'] - v['flowkd_s']:.2f} |")
    left = [v["flowkd_s"] for v in rows.values()]
    saved = [v["public_s"] - v["flowkd_s"] for v in rows.values()]
    lines += ["", f"torchlib's table of translations, built again in this warm process: {table:.2f} s (to_onnx builds it "
              "once per process; torch.onnx.export builds it, and the rest of its wrapper, for every model). Saved per "
              f"export: {min(saved):.2f}-{max(saved):.2f} s.", "",
              f"The demo's three architectures: {demo_public:.2f} s the public way, {demo_ours:.2f} s with to_onnx "
              f"(table once + three exports): {doc['demo']['speedup']:.2f}x. What is left of an export, "
              f"{min(left):.2f}-{max(left):.2f} s, is torch's own work per call (the program's decompositions, the "
              "translation and its optimiser), near the same for an MLP and a CNN: fixed cost, not arithmetic."]
    write("onnx_export", doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
