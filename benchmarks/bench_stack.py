"""Can students of one architecture share kernels? K very tiny CNNs one after another vs the same K stacked.

The part of a cohort's step that sharing data and teacher work cannot touch is each student's own forward and
backward. One candidate for making it cheaper is to run the K students of one architecture as one network:
the first convolution's filters concatenated (every student reads the same images), the later convolutions as
grouped convolutions (groups = K), BatchNorm over the concatenated channels (per channel, so per student), and
the fully connected layers as batched matrix products. This benchmark builds that stacked network from K
independently initialised ``verytiny`` students, checks that it computes exactly their outputs and
gradients (to float tolerance), and times forward + backward of both, side by side in one process, on the
CPU (each thread count asked for) and on CUDA when there is one. It answers "stack or not" per device before
any of it goes into the training loop.

    python benchmarks/bench_stack.py                     # CPU, 1 and 2 threads; CUDA too when present
    python benchmarks/bench_stack.py --students 5 10 --repeat 20
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from _common import machine, sync, write

from flowkd.models import create_model
from flowkd.taps import Taps


class Stacked(nn.Module):
    """K ``SmallCNN`` students (one architecture) as one network; ``forward`` gives (K, B, classes) logits and
    the (K, B, hidden) representations."""

    def __init__(self, students: list[nn.Module]):
        super().__init__()
        self.k = k = len(students)
        cat = lambda name, attr: nn.Parameter(torch.cat([getattr(getattr(s, name), attr).detach() for s in students]))
        self.w1, self.b1 = cat("conv1", "weight"), cat("conv1", "bias")
        self.w2, self.b2 = cat("conv2", "weight"), cat("conv2", "bias")
        self.w3, self.b3 = cat("conv3", "weight"), cat("conv3", "bias")
        self.bn = nn.ModuleList()
        for i in (1, 2, 3):
            bn = nn.BatchNorm2d(k * getattr(students[0], f"conv{i}_bn").num_features)
            with torch.no_grad():
                bn.weight.copy_(torch.cat([getattr(s, f"conv{i}_bn").weight for s in students]))
                bn.bias.copy_(torch.cat([getattr(s, f"conv{i}_bn").bias for s in students]))
            self.bn.append(bn)
        self.f1w = nn.Parameter(torch.stack([s.fc1.weight.detach() for s in students]))  # K, hidden, in
        self.f1b = nn.Parameter(torch.stack([s.fc1.bias.detach() for s in students]))
        self.f2w = nn.Parameter(torch.stack([s.fc2.weight.detach() for s in students]))
        self.f2b = nn.Parameter(torch.stack([s.fc2.bias.detach() for s in students]))

    def forward(self, x):
        k = self.k
        x = F.max_pool2d(F.relu(self.bn[0](F.conv2d(x, self.w1, self.b1))), 2)
        x = F.max_pool2d(F.relu(self.bn[1](F.conv2d(x, self.w2, self.b2, groups=k))), 2)
        x = F.max_pool2d(F.relu(self.bn[2](F.conv2d(x, self.w3, self.b3, groups=k))), 2)
        x = x.reshape(x.shape[0], k, -1, *x.shape[2:]).flatten(2).transpose(0, 1)  # K, B, per-student features
        h = F.relu(torch.baddbmm(self.f1b.unsqueeze(1), x, self.f1w.transpose(1, 2)))
        return torch.baddbmm(self.f2b.unsqueeze(1), h, self.f2w.transpose(1, 2)), h


def _loss(logits, h):  # any scalar that reaches every parameter through both outputs
    return logits.square().mean() + h.square().mean()


def one_by_one(taps: list[Taps], x) -> torch.Tensor:
    """Forward + backward of each student in turn (its fc1 read by a tap); their logits, stacked."""
    outs = []
    for t in taps:
        logits, feats = t(x)
        _loss(logits, feats["fc1_relu"]).backward()
        outs.append(logits.detach())
    return torch.stack(outs)


def together(stacked: Stacked, x) -> torch.Tensor:
    """Forward + backward of the stacked network, the same loss per student; its (K, B, classes) logits."""
    logits, h = stacked(x)
    sum(_loss(logits[i], h[i]) for i in range(stacked.k)).backward()
    return logits.detach()


def check_equal(students, taps, stacked, x) -> float:
    """Max abs difference of the outputs and of the first conv's gradient, stacked vs one by one."""
    for m in (*students, stacked):
        m.zero_grad()
    d_out = (together(stacked, x) - one_by_one(taps, x)).abs().max().item()
    d_grad = (stacked.w1.grad - torch.cat([s.conv1.weight.grad for s in students])).abs().max().item()
    return max(d_out, d_grad)


def time_both(taps, stacked, x, repeat: int, device) -> tuple[float, float]:
    """Median seconds of one forward + backward: the K students one after another, and stacked."""
    runs = {"one_by_one": lambda: one_by_one(taps, x), "together": lambda: together(stacked, x)}
    times = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        for _ in range(3):
            fn()
    for _ in range(repeat):  # alternate, so that both see the same machine state
        for name, fn in runs.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    upper_median = lambda v: sorted(v)[len(v) // 2]
    return upper_median(times["one_by_one"]), upper_median(times["together"])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", type=int, nargs="+", default=[5])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--no-cuda", action="store_true")
    args = p.parse_args()
    setups = [("cpu", t) for t in args.threads]
    if torch.cuda.is_available() and not args.no_cuda:
        setups.append(("cuda", None))
    rows = []
    for dev, threads in setups:
        device = torch.device(dev)
        if threads:
            torch.set_num_threads(threads)
        layout = torch.channels_last  # flowkd's CPU default; on CUDA fp32 NCHW vs CL matters little here
        for k in args.students:
            torch.manual_seed(0)
            students = [create_model("verytiny").to(device, memory_format=layout) for _ in range(k)]
            stacked = Stacked(students).to(device, memory_format=layout)
            x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=layout)
            taps = [Taps(st, ["fc1_relu"]) for st in students]
            diff = check_equal(students, taps, stacked, x)
            seq, stk = time_both(taps, stacked, x, args.repeat, device)
            for t in taps:
                t.remove()
            rows.append({"device": dev, "threads": threads, "students": k, "one_by_one_ms": round(seq * 1e3, 3),
                         "stacked_ms": round(stk * 1e3, 3), "speedup": round(seq / stk, 3), "max_abs_diff": diff})
            print(rows[-1])
    doc = {"machine": machine(torch.device("cuda" if any(r["device"] == "cuda" for r in rows) else "cpu")),
           "batch": args.batch, "repeat": args.repeat, "rows": rows}
    lines = ["# K very tiny CNN students: one after another vs stacked into one network (grouped convolutions)", "",
             f"forward + backward of one batch of {args.batch} 32x32 images, median of {args.repeat} alternating "
             f"repeats, channels_last; torch {doc['machine']['torch']}; side by side in one process", "",
             "| device | threads | students | one after another, ms | stacked, ms | stacked speed-up | max abs diff |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['threads'] or '-'} | {r['students']} | {r['one_by_one_ms']:.2f} | "
                     f"{r['stacked_ms']:.2f} | **{r['speedup']:.2f}x** | {r['max_abs_diff']:.1e} |")
    lines += ["", "A speed-up below 1 means the stacked network is slower than the students one after another."]
    name = "stack_cuda" if any(r["device"] == "cuda" for r in rows) else "stack"
    write(name, doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
