"""The ResNet-18 teacher's inference pass on this machine's CPU: today's way (float32, NCHW, batch 1024 as
``compute_features`` runs it) vs the setting ``flowkd.inference.fastest_setting`` measures and picks, side by
side in rotated rounds, and what a pass over the 50,000 CIFAR-10 training images costs each way (the search's
own time counted in). The arithmetic limit: the network's multiply-adds over the rate of one large matrix
product in float32 and in bfloat16 on the same threads.

    python benchmarks/bench_inference.py [--weights teacher.pt] [--images DIR_OF_JPGS] [--rounds 3]

Speed does not depend on the weights; the bf16 setting's output error does, so pass the trained weights and
real images to check it on them (random weights / noise otherwise, recorded in the results).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import machine, paired_ratio, side_by_side, write

from flowkd.cost import count_macs
from flowkd.inference import fastest_setting
from flowkd.models import create_model

MEAN, STD = (125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)


def sample_images(folder: str, n: int) -> tuple[torch.Tensor, str]:
    """n real images (normalised CIFAR-10 style) from a folder of image files, else standard normal noise."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".png")) if folder else []
    if not files:
        return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)), "noise"
    import numpy as np
    from PIL import Image

    step = max(1, len(files) // n)
    arr = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in files[::step][:n]])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None], f"{len(x)} images of {folder}"


def rate(dtype, seconds=1.0) -> float:
    """Multiply-adds per second of a 1024^3 matrix product in ``dtype`` on this process's threads (best)."""
    a, b = torch.randn(1024, 1024).to(dtype), torch.randn(1024, 1024).to(dtype)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 1024**3 / (time.perf_counter() - t0))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="")
    ap.add_argument("--images", default="")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=50000)
    ap.add_argument("--today-batch", type=int, default=1024)
    args = ap.parse_args()
    wall = time.perf_counter()
    dev = torch.device("cpu")
    model = create_model("preact_resnet18", num_classes=10).eval()
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    sample, source = sample_images(args.images, 512)
    macs = count_macs(model, (3, 32, 32))

    t0 = time.perf_counter()
    setting = fastest_setting(model, sample, dev)
    search_s = time.perf_counter() - t0

    today_x = sample.repeat(-(-args.today_batch // len(sample)), 1, 1, 1)[:args.today_batch]
    chosen_x = setting.prepare(sample.repeat(-(-setting.batch // len(sample)), 1, 1, 1)[:setting.batch])
    plain = create_model("preact_resnet18", num_classes=10).eval()
    plain.load_state_dict(model.state_dict())
    setting.apply(model)

    def today():
        with torch.inference_mode():
            plain(today_x)

    def chosen():
        with torch.inference_mode(), setting.context():
            model(chosen_x)

    times = side_by_side({"today": today, "chosen": chosen}, args.rounds)
    ips = {"today": args.today_batch / times["today"]["median_s"], "chosen": setting.batch / times["chosen"]["median_s"]}
    speedup = paired_ratio([t / args.today_batch for t in times["today"]["rounds_s"]],
                           [t / setting.batch for t in times["chosen"]["rounds_s"]])
    pass_s = {"today": args.train_images / ips["today"], "chosen": args.train_images / ips["chosen"] + search_s}
    r32, r16 = rate(torch.float32), rate(torch.bfloat16)
    total = macs * args.train_images
    limit = {"float32": total / r32, "bf16": total / r16}
    m = machine(dev)
    doc = {"machine": m, "threads": torch.get_num_threads(), "macs_per_image": macs, "sample": source,
           "weights": Path(args.weights).name if args.weights else "random", "setting": setting.as_dict(),
           "search_s": round(search_s, 2), "images_per_s": {k: round(v, 1) for k, v in ips.items()},
           "speedup_vs_today": round(speedup, 3), "pass_s": {k: round(v, 1) for k, v in pass_s.items()},
           "target_pass_s": 150, "gemm_macs_per_s": {"float32": round(r32), "bf16": round(r16)},
           "arith_limit_pass_s": {k: round(v, 1) for k, v in limit.items()}, "rounds": args.rounds,
           "rounds_s": {k: v["rounds_s"] for k, v in times.items()}, "wall_s": round(time.perf_counter() - wall, 1),
           "command": "python benchmarks/bench_inference.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())}
    tried = "\n".join(f"| {t['batch']} | {'bf16' if t['bf16'] else 'float32'} | {'channels_last' if t['channels_last'] else 'NCHW'} | {t['threads']} | "
                      f"{t['images_per_s']:,.1f} | {t['rel_error']:.2e} | {t['eligible']} |" for t in setting.tried)
    lim = "bf16" if setting.bf16 else "float32"
    table = "\n".join([
        f"# ResNet-18 teacher inference on the CPU ({doc['threads']} threads), {macs / 1e6:.1f} M multiply-adds an image", "",
        f"machine: {m['device']}, torch {m['torch']}, load average {m['loadavg']} (shared cores); weights: {doc['weights']}; "
        f"sample: {source}; medians of {args.rounds} rounds, order rotated; wall {doc['wall_s']} s", "",
        "| way | images/s | pass over 50,000 images |", "|---|---:|---:|",
        f"| today: float32, NCHW, batch {args.today_batch} | {ips['today']:,.1f} | {pass_s['today']:.0f} s |",
        f"| fastest_setting: {setting.summary()} | {ips['chosen']:,.1f} | {pass_s['chosen']:.0f} s (search {search_s:.0f} s included) |", "",
        f"Speed-up {speedup:.2f}x (median of per-round ratios). Target: a pass in 150 s. Arithmetic limit of a pass: "
        f"{limit['float32']:.0f} s in float32 ({r32 / 1e9:.0f} G multiply-adds/s on one large product), {limit['bf16']:.0f} s in bf16 "
        f"({r16 / 1e9:.0f} G/s); the chosen setting is {pass_s['chosen'] / limit[lim]:.1f}x the {lim} limit.", "",
        "The search (each candidate warmed up once, timed twice; error: relative L2 of the outputs vs float32 NCHW on 32 sample images):", "",
        "| batch | precision | format | threads | images/s | error | eligible |", "|---:|---|---|---:|---:|---:|---|", tried]) + "\n"
    write("inference", doc, table)


if __name__ == "__main__":
    main()
