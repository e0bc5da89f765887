"""The paper's combined PKT kernel: two kernels from one matrix product per side (fused) vs one product per
kernel (separate), forward + backward, same run. Four pairs of the student stage's shapes (batch 128).

    python benchmarks/bench_pkt.py [--device cuda] [--repeat 50]
"""

from __future__ import annotations

import argparse

import torch
from _common import machine, timed, write

from flowkd.losses.divergences import jeffreys
from flowkd.losses.kernels import conditional, cosine, student_t
from flowkd.losses.pkt import pkt_loss

# (teacher dim, student dim) of the 4 pairs: tiny (aux) vs very tiny pool1..3 and fc1_relu, CIFAR-10 shapes
PAIRS = [(16 * 15 * 15, 8 * 15 * 15), (32 * 6 * 6, 16 * 6 * 6), (64 * 2 * 2, 32 * 2 * 2), (128, 64)]


def separate(t, s):
    return sum(jeffreys(conditional(k(t)), conditional(k(s))) for k in (cosine, student_t))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    feats = [(torch.randn(args.batch, dt, generator=g).relu().to(dev),
              torch.randn(args.batch, ds, generator=g).relu().to(dev).requires_grad_()) for dt, ds in PAIRS]

    def run(fn):
        def go():
            total = sum(fn(t, s) for t, s in feats)
            total.backward()
            return float(total.detach())
        return go

    go_sep, go_fused = run(separate), run(lambda t, s: pkt_loss(t, s, "combined"))
    go_sep(), go_fused()  # warm-up
    t_sep, v_sep = timed(lambda: [go_sep() for _ in range(args.repeat)][-1], dev)
    t_fused, v_fused = timed(lambda: [go_fused() for _ in range(args.repeat)][-1], dev)
    ms_sep, ms_fused = t_sep / args.repeat * 1e3, t_fused / args.repeat * 1e3
    m = machine(dev)
    table = "\n".join([
        f"# Combined PKT kernel, 4 pairs (student stage shapes), batch {args.batch}, forward + backward", "",
        f"machine: {m.get('gpu') or m['device']}, torch {m['torch']}, {m['cpu_threads']} CPU threads; mean of {args.repeat}", "",
        "| kernels | ms / step | vs separate | loss |", "|---|---:|---:|---:|",
        f"| separate (one product per kernel) | {ms_sep:.3f} | 1.00x | {v_sep:.7f} |",
        f"| fused (one product per side) | {ms_fused:.3f} | {ms_sep / ms_fused:.2f}x | {v_fused:.7f} |"]) + "\n"
    doc = {"machine": m, "batch": args.batch, "repeat": args.repeat, "pairs": PAIRS,
           "separate_ms": round(ms_sep, 4), "fused_ms": round(ms_fused, 4), "speedup": round(ms_sep / ms_fused, 3),
           "loss_separate": v_sep, "loss_fused": v_fused}
    write("pkt" + ("" if dev.type == "cpu" else "_" + dev.type), doc, table)


if __name__ == "__main__":
    main()
