"""The very tiny student's information-flow step (stage C: the frozen auxiliary's 4 taps, the student's 4 taps,
PKT over 4 pairs, backward, Adam) in several modes, side by side in rotated rounds on the same batches: eager
float32 NCHW / channels_last, bf16 autocast, torch.compile (its compile time counted apart, with the steps it
takes to pay back), and 1 vs 2 intra-op threads. Each mode trains its own copy from the same initial weights
on the same batches; the loss after the last step is recorded (bf16 and compiled are not bit-exact with eager).

    python benchmarks/bench_step.py [--rounds 8] [--steps 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from _common import machine, paired_ratio, write

from flowkd import CriticalPeriod, InformationFlowLoss
from flowkd.compiled import compile_or_eager, cpp_compiler
from flowkd.data.arrays import ArrayDataset, Loader
from flowkd.models import create_model
from flowkd.taps import FrozenTaps, Taps

MEAN, STD = (125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)
PAIRS = [("pool1", "pool1"), ("pool2", "pool2"), ("pool3", "pool3"), ("fc1_relu", "fc1_relu")]


class Mode:
    def __init__(self, name, aux, student, *, channels_last=False, bf16=False, compiled=False, threads=1):
        self.name, self.bf16, self.threads, self.channels_last = name, bf16, threads, channels_last
        aux, student = copy.deepcopy(aux), copy.deepcopy(student)
        if channels_last:
            aux, student = (m.to(memory_format=torch.channels_last) for m in (aux, student))
        self.flow = InformationFlowLoss(PAIRS, CriticalPeriod())
        fa = compile_or_eager(aux, "cpu") if compiled else aux
        fs = compile_or_eager(student, "cpu") if compiled else student
        self.teacher, self.taps = FrozenTaps(fa, self.flow.teacher_taps), Taps(fs, self.flow.student_taps)
        self.opt = torch.optim.Adam(student.parameters(), 1e-3)
        self.loss = float("nan")
        self.first_s = None

    def step(self, x):
        torch.set_num_threads(self.threads)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            t = self.teacher(x)
            s = self.taps(x)[1]
            loss = self.flow(t, s, 0)["loss"]
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.loss = float(loss.detach())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="steps of each mode per round")
    args = ap.parse_args()
    wall = time.perf_counter()
    threads0 = torch.get_num_threads()
    g = np.random.default_rng(0)
    n = 128 * (args.steps + 2)
    data = ArrayDataset(g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n),
                        [str(c) for c in range(10)], MEAN, STD)
    batches = [x for x, _ in Loader(data, 128, shuffle=True, augment=True)]
    batches_cl = [x.contiguous(memory_format=torch.channels_last) for x in batches]
    torch.manual_seed(0)
    aux, student = create_model("tiny").eval(), create_model("verytiny")
    have_cxx = cpp_compiler() is not None
    modes = [Mode("eager float32 NCHW, 1 thread", aux, student),
             Mode("eager float32 channels_last, 1 thread (the CPU default)", aux, student, channels_last=True),
             Mode("eager bf16 autocast channels_last, 1 thread", aux, student, channels_last=True, bf16=True),
             Mode("eager float32 channels_last, 2 threads", aux, student, channels_last=True, threads=2)]
    if have_cxx:
        modes.append(Mode("torch.compile float32 channels_last, 1 thread", aux, student, channels_last=True, compiled=True))
    for m in modes:  # warm-up; the compiled mode's first steps are its compile time
        t0 = time.perf_counter()
        for x in (batches_cl if m.channels_last else batches)[:2]:
            m.step(x)
        m.first_s = time.perf_counter() - t0
    per = {m.name: [] for m in modes}
    for r in range(args.rounds):
        for m in modes[r % len(modes):] + modes[:r % len(modes)]:
            t0 = time.perf_counter()
            for x in (batches_cl if m.channels_last else batches)[2:2 + args.steps]:
                m.step(x)
            per[m.name].append((time.perf_counter() - t0) / args.steps)
    torch.set_num_threads(threads0)
    base = modes[1].name
    runs, rows = {}, []
    for m in modes:
        ms = statistics.median(per[m.name]) * 1e3
        ratio = paired_ratio(per[base], per[m.name])
        runs[m.name] = {"ms_per_step": round(ms, 3), "speed_vs_default": round(ratio, 3), "loss_after": m.loss,
                        "first_two_steps_s": round(m.first_s, 2), "rounds_s": [round(v, 5) for v in per[m.name]]}
        rows.append(f"| {m.name} | {ms:.2f} | {ratio:.2f}x | {391 * ms / 1e3:.2f} | {m.first_s:.1f} | {m.loss:.6f} |")
    comp = next((m for m in modes if "compile" in m.name), None)
    note = "no C++ compiler here: torch.compile not measured"
    if comp is not None:
        saved = runs[base]["ms_per_step"] - runs[comp.name]["ms_per_step"]
        extra = comp.first_s - modes[1].first_s
        note = (f"torch.compile: {extra:.1f} s more for the first two steps (the compile), "
                + (f"{saved:.2f} ms a step saved: pays back after {extra / saved * 1e3:.0f} steps "
                   f"({extra / saved * 1e3 / 391:.1f} epochs of 391 steps)." if saved > 0 else
                   f"and no step saved ({-saved:.2f} ms a step slower): it does not pay."))
    mac = 1e6 * (0.47 * 3 + 1.50) * 128  # student forward + backward (~3x forward), aux forward, per batch of 128
    m = machine(torch.device("cpu"))
    doc = {"machine": m, "rounds": args.rounds, "steps_per_round": args.steps, "runs": runs, "compile_note": note,
           "cpp_compiler": cpp_compiler(), "wall_s": round(time.perf_counter() - wall, 1),
           "network_macs_per_step": mac, "command": f"python benchmarks/bench_step.py --rounds {args.rounds} --steps {args.steps}"}
    table = "\n".join([
        "# The very tiny student's information-flow step (batch 128, 4 pairs), by mode", "",
        f"machine: {m['device']}, torch {m['torch']}, load average {m['loadavg']} (shared cores); synthetic images, "
        f"augmented; medians of {args.rounds} rounds of {args.steps} steps, order rotated; speed: median of per-round "
        f"ratios against the CPU default (float32 channels_last, 1 thread); wall {doc['wall_s']} s", "",
        "| mode | ms / step | speed vs default | s / epoch (391 steps, no data) | first 2 steps s | loss after |",
        "|---|---:|---:|---:|---:|---:|", *rows, "", note, "",
        f"Arithmetic: the networks' multiply-adds are about {mac / 1e9:.2f} G a step (student forward + backward ~3x its "
        "0.47 M an image, the auxiliary's forward 1.50 M an image) plus PKT's 0.29 G (results/bench_pkt.md): at one "
        "core's ~40 G multiply-adds/s that is about "
        f"{(mac + 0.295e9) / 40e9 * 1e3:.0f} ms a step."]) + "\n"
    write("step", doc, table)


if __name__ == "__main__":
    main()
