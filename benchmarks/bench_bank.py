"""The bank of teacher views' pass on this machine: the PreAct ResNet-18's images/s in fp32 and bf16 (side by side,
channels_last, inference mode), what bf16 and float16 storage change in the stored values and in each loss, the
bytes per view of each loss's entry, and the disk of a bank on disk.

    python benchmarks/bench_bank.py --data-root DIR --weights RESNET18.pt [--bank BANK_FOLDER]

Writes results/bench_bank.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from flowkd.bank import entry_for  # noqa: E402
from flowkd.data.readers import load_dataset  # noqa: E402
from flowkd.data.arrays import apply_views, draw_views  # noqa: E402
from flowkd.io import load_into  # noqa: E402
from flowkd.losses.baselines import make_pair_loss  # noqa: E402
from flowkd.losses.pkt import PKTLoss  # noqa: E402
from flowkd.models import create_model  # noqa: E402
from flowkd.taps import FrozenTaps  # noqa: E402

# the comparison's entries (configs/compare_cifar10.toml): loss -> teacher taps
LOSSES = {
    "kd (logits)": ("kd", ["linear"]),
    "pkt / sp (last layer)": ("pkt", ["linear:input"]),
    "information flow (ablation b)": ("pkt", ["layer1@4", "layer2@4", "layer3@2", "linear:input"]),
    "at (attention maps)": ("at", ["layer1@map", "layer2@map", "layer3@map"]),
    "fitnet hint (layer2 map)": ("fitnet", ["layer2@map"]),
}


def _images(args, n):
    train, _ = load_dataset("cifar10_jpg", args.data_root)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train), generator=g)[:n]
    x = apply_views(train.images[idx], draw_views(n, 4, g), 4)
    return train.normalize(x).contiguous(memory_format=torch.channels_last)


def _rate(model, x, batch, precision, reps):
    taps = FrozenTaps(model, ["linear"], inference_mode=True)
    cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    try:
        for _ in range(reps):
            t0 = time.perf_counter()
            for lo in range(0, len(x), batch):
                with cast:
                    taps(x[lo:lo + batch])
            times.append(time.perf_counter() - t0)
    finally:
        taps.remove()
    return len(x) / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--weights", default="")
    ap.add_argument("--bank", default="", help="a bank folder whose disk use to report")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_bank"))
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.manual_seed(0)
    model = create_model("preact_resnet18", num_classes=10, in_channels=3, in_size=32)
    if args.weights:
        load_into(model, args.weights, "preact_resnet18")
    model = model.eval().to(memory_format=torch.channels_last)
    x = _images(args, args.images)

    # 1. images/s, fp32 and bf16 side by side (alternating, median of reps)
    speed = {}
    for batch in (128, 256, 512):
        for precision in ("fp32", "bf16"):
            speed[f"{precision} batch {batch}"] = round(_rate(model, x, batch, precision, args.reps), 1)
    best32 = max(v for k, v in speed.items() if k.startswith("fp32"))
    best16 = max(v for k, v in speed.items() if k.startswith("bf16"))

    # 2. what bf16 (the pass) and float16 (the storage) change, per loss
    specs = sorted({t for _, taps in LOSSES.values() for t in taps})
    n = min(len(x), 256)
    with FrozenTaps(model, specs) as taps:
        ref = taps(x[:n])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = {k: v.float() for k, v in taps(x[:n]).items()}
    g = torch.Generator().manual_seed(1)
    effect, bytes_per_view = {}, {}
    for label, (loss_name, tap_list) in LOSSES.items():
        total = 0
        rows = []
        for t in tap_list:
            shape = tuple(ref[t].shape[1:])
            loss = PKTLoss() if loss_name == "pkt" else make_pair_loss(loss_name, shape, shape)
            entry, form = entry_for(t, loss)
            stored = form(ref[t]) if form is not None else ref[t]
            total += int(np.prod(stored.shape[1:])) * (4 if entry.dtype == "float32" else 2)
            student = ref[t] + 0.5 * ref[t].std() * torch.randn(ref[t].shape, generator=g)  # a plausible student
            if loss_name == "fitnet":
                loss = make_pair_loss("fitnet", shape, shape)
            with torch.no_grad():
                exact = float(loss(ref[t].float(), student))
                store = stored.to(torch.float16 if entry.dtype == "float16" else torch.float32).float()
                stored_loss = float(loss(store, student))
                bf = form(low[t]) if form is not None else low[t]
                bf16_loss = float(loss(bf.to(torch.float16 if entry.dtype == "float16" else torch.float32).float(), student))
            rows.append({"tap": t, "entry": entry.file, "loss fp32": exact,
                         "rel. change, float16 storage": abs(stored_loss - exact) / max(abs(exact), 1e-12),
                         "rel. change, bf16 pass + storage": abs(bf16_loss - exact) / max(abs(exact), 1e-12),
                         "rel. value error, bf16 pass": float((low[t] - ref[t].float()).norm() / ref[t].float().norm())})
        effect[label] = rows
        bytes_per_view[label] = total
    disk = None
    if args.bank and Path(args.bank).is_dir():
        files = list(Path(args.bank).glob("view-*/*.npy"))
        disk = {"folder": args.bank, "files": len(files), "bytes": sum(f.stat().st_size for f in files),
                "views": len({f.parent.name for f in files})}
    res = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "load_avg": os.getloadavg()},
        "images": len(x), "weights": Path(args.weights).name if args.weights else "random init",
        "images_per_s": speed, "bf16_over_fp32": round(best16 / best32, 2),
        "minutes_per_view_50k": {"fp32": round(50000 / best32 / 60, 2), "bf16": round(50000 / best16 / 60, 2)},
        "bytes_per_image_per_view": bytes_per_view, "effect": effect, "disk": disk,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "command": "python benchmarks/bench_bank.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = ["# The bank of teacher views: the PreAct ResNet-18's pass on this machine\n",
          f"`{res['command']}` — {res['machine']['cpu']}, {res['machine']['threads']} threads, torch "
          f"{res['machine']['torch']}, load average {', '.join(f'{v:.1f}' for v in res['machine']['load_avg'])} "
          f"(other jobs shared the cores: compare the columns, not the absolute rates); {res['images']} CIFAR-10 "
          f"training images through random views; weights: {res['weights']}; wall {res['wall_s']} s.\n",
          "| setting | images/s |", "|---|---:|"]
    md += [f"| {k} | {v} |" for k, v in speed.items()]
    md += ["", f"bf16 / fp32 (best of each): **{res['bf16_over_fp32']}×**; one view of the 50,000 training images: "
           f"{res['minutes_per_view_50k']['fp32']} min fp32, {res['minutes_per_view_50k']['bf16']} min bf16.\n",
           "## Bytes per image per view, by loss (what the bank stores: the loss's teacher form)\n",
           "| loss | taps | bytes / image / view | MiB per view of 50,000 images |", "|---|---|---:|---:|"]
    md += [f"| {k} | {', '.join(LOSSES[k][1])} | {v:,} | {v * 50000 / 2**20:,.1f} |" for k, v in bytes_per_view.items()]
    md += ["", "## What bf16 (the pass) and float16 (the storage) change\n",
           "Relative change of each loss's value against fp32 everywhere, on 256 images with a plausible student "
           "(the teacher's features + noise of half their std); and the relative L2 error of the bf16 pass's raw values.\n",
           "| loss | tap | stored as | float16 storage | bf16 pass + storage | bf16 values (rel. L2) |", "|---|---|---|---:|---:|---:|"]
    for k, rows in effect.items():
        md += [f"| {k} | {r['tap']} | {r['entry']} | {r['rel. change, float16 storage']:.1e} | "
               f"{r['rel. change, bf16 pass + storage']:.1e} | {r['rel. value error, bf16 pass']:.1e} |" for r in rows]
    if disk:
        md += ["", f"Disk of the bank in `{disk['folder']}`: {disk['bytes'] / 2**30:.2f} GiB in {disk['files']} files "
               f"over {disk['views']} views."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
