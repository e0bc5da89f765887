"""The information-flow loss's PKT terms computed four ways, forward + backward, same run: each kernel on its
own through autograd (separate), all pairs stacked through autograd (what flowkd did before its hand-written
backward), flowkd's fused function pair by pair (``pkt_loss``), and all pairs at once (``pkt_pairs``, what
``InformationFlowLoss`` uses). Four pairs of the student stage's shapes (batch 128); on a GPU it also counts
the kernels each launches (what bounds a small student's step).

    python benchmarks/bench_pkt.py [--device cuda] [--repeat 50]
"""

from __future__ import annotations

import argparse

import torch
from _common import machine, timed, write

from flowkd.losses.divergences import jeffreys
from flowkd.losses.kernels import conditional, cosine, student_t
from flowkd.losses.pkt import pkt_loss, pkt_pairs

# (teacher dim, student dim) of the 4 pairs: tiny (aux) vs very tiny pool1..3 and fc1_relu, CIFAR-10 shapes
PAIRS = [(16 * 15 * 15, 8 * 15 * 15), (32 * 6 * 6, 16 * 6 * 6), (64 * 2 * 2, 32 * 2 * 2), (128, 64)]


def separate(t, s):
    return sum(jeffreys(conditional(k(t)), conditional(k(s))) for k in (cosine, student_t))


def stacked_autograd(ts, ss):
    """All pairs stacked, every step recorded by autograd: the baseline for the hand-written backward."""
    def kernels(xs):
        raw = torch.stack([x @ x.T for x in xs])
        n = torch.stack([torch.linalg.vector_norm(x, dim=1, keepdim=True) for x in xs]) + 1e-6
        cen = torch.stack([(c := x - x.mean(0, keepdim=True).detach()) @ c.T for x in xs])
        sq = torch.diagonal(cen, dim1=1, dim2=2).unsqueeze(2)
        off = 1.0 - torch.eye(cen.shape[1], device=cen.device)
        d2 = (sq + sq.transpose(1, 2) - 2.0 * cen).clamp_min(0.0) * off
        return torch.cat([(raw / (n * n.transpose(1, 2)) + 1.0) / 2.0, 1.0 / (1.0 + torch.sqrt(d2 + 1e-6))])
    p, q = conditional(kernels(ts)), conditional(kernels(ss))
    return jeffreys(p, q, dim=(1, 2)).view(2, -1).sum(0)


def kernel_launches(fn, dev) -> int | None:
    """GPU kernels one call of ``fn`` launches (None on the CPU)."""
    if dev.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(dev)
    return sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")


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

    def per_pair(fn):
        def go():
            total = sum(fn(t, s) for t, s in feats)
            total.backward()
            return float(total.detach())
        return go

    def all_pairs(fn):
        def go():
            total = fn([t for t, _ in feats], [s for _, s in feats]).sum()
            total.backward()
            return float(total.detach())
        return go

    variants = [("separate kernels, autograd, pair by pair", per_pair(separate)),
                ("all pairs stacked, autograd", all_pairs(stacked_autograd)),
                ("fused function (hand-written backward), pair by pair", per_pair(lambda t, s: pkt_loss(t, s, "combined"))),
                ("fused function, all pairs at once (pkt_pairs, the default)", all_pairs(pkt_pairs))]
    rows, runs = [], {}
    for name, go in variants:
        go()  # warm-up
        t, v = timed(lambda: [go() for _ in range(args.repeat)][-1], dev)
        runs[name] = {"ms": round(t / args.repeat * 1e3, 4), "loss": v, "kernels": kernel_launches(go, dev)}
    base = runs[variants[0][0]]["ms"]
    for name, r in runs.items():
        r["speedup"] = round(base / r["ms"], 3)
        rows.append(f"| {name} | {r['ms']:.3f} | {r['speedup']:.2f}x | {r['kernels'] if r['kernels'] is not None else '—'} | {r['loss']:.7f} |")
    m = machine(dev)
    table = "\n".join([
        f"# PKT (combined kernel, Jeffreys), 4 pairs of the student stage's shapes, batch {args.batch}, forward + backward", "",
        f"machine: {m.get('gpu') or m['device']}, torch {m['torch']}, {m['cpu_threads']} CPU threads; mean of {args.repeat} eager calls", "",
        "| computation | ms / step | vs separate | GPU kernels | loss |", "|---|---:|---:|---:|---:|", *rows]) + "\n"
    doc = {"machine": m, "batch": args.batch, "repeat": args.repeat, "pairs": PAIRS, "runs": runs}
    write("pkt" + ("" if dev.type == "cpu" else "_" + dev.type), doc, table)


if __name__ == "__main__":
    main()
