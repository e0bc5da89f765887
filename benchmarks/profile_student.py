"""Where the student's information-flow step spends its time: phases and the top operators.

The step of stage C (docs/method.md §3): the auxiliary "tiny" CNN's forward (no grad) on the batch, the very tiny
student's forward with 4 taps, the 4-pair PKT loss, backward, Adam. Each phase is timed with a device sync
around it (this serialises GPU work a little, so the phase shares are what matters), then the same steps run
under torch.profiler for the top operators by self time. Writes results/bench_profile_student[_cuda].json|md.

    python benchmarks/profile_student.py --data .devdata/cifar10 --steps 40
    python benchmarks/profile_student.py --device cuda --amp        # on a GPU, bf16 like the fast path
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch
from _common import machine, sync, write

from flowkd import CriticalPeriod, InformationFlowLoss
from flowkd.data.arrays import ArrayDataset, Loader
from flowkd.models import create_model
from flowkd.taps import FrozenTaps
from flowkd.taps import Taps

MEAN, STD = (125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)
PAIRS = [("pool1", "pool1"), ("pool2", "pool2"), ("pool3", "pool3"), ("fc1_relu", "fc1_relu")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="", help="a CIFAR-10 JPEG folder (else synthetic images)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for the networks (PKT stays fp32)")
    ap.add_argument("--channels-last", action="store_true", help="models and batches in channels_last")
    ap.add_argument("--suffix", default="", help="appended to the results' name (e.g. _shared: a run on busy cores)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    n = 128 * (args.steps + 5)
    if args.data:
        from flowkd.data.readers import load_dataset
        tr, _ = load_dataset("cifar10_jpg", args.data)
        images, labels = tr.images[:n], tr.labels[:n]
    else:
        g = np.random.default_rng(0)
        images, labels = g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n)
    data = ArrayDataset(images, labels, [str(c) for c in range(10)], MEAN, STD).to(dev)
    torch.manual_seed(0)
    aux, student = create_model("tiny").to(dev), create_model("verytiny").to(dev)
    if args.channels_last:
        aux, student = (m.to(memory_format=torch.channels_last) for m in (aux, student))
    flow = InformationFlowLoss(PAIRS, CriticalPeriod())
    teacher, taps = FrozenTaps(aux, flow.teacher_taps), Taps(student, flow.student_taps)
    opt = torch.optim.Adam(student.parameters(), 1e-3, fused=dev.type == "cuda" or None)  # as flowkd's loop
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if args.amp else None
    phases: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        sync(dev)
        t0 = time.perf_counter()
        out = fn()
        sync(dev)
        phases[name] += time.perf_counter() - t0
        return out

    def one_step(x, y, record: bool):
        run = timed if record else (lambda name, fn: fn())
        with amp if amp is not None else torch.autocast(dev.type, enabled=False):
            t = run("aux forward (no grad)", lambda: teacher(x))
            s = run("student forward (4 taps)", lambda: taps(x)[1])
            loss = run("PKT loss, 4 pairs (fp32)", lambda: flow(t, s, 0)["loss"])
        run("backward", lambda: loss.backward())
        run("Adam step", lambda: (opt.step(), opt.zero_grad(set_to_none=True)))

    batches = [(b.x, b.y) for b in Loader(data, 128, shuffle=True, augment=True, channels_last=args.channels_last)]
    for x, y in batches[:5]:  # warm-up
        one_step(x, y, False)
    data_t0 = time.perf_counter()
    for _ in Loader(data, 128, shuffle=True, augment=True, channels_last=args.channels_last):  # the loader alone: gather + augment + normalise
        pass
    sync(dev)
    phases["data (gather, augment, normalise)"] = (time.perf_counter() - data_t0) * args.steps / len(batches)
    for x, y in batches[5:5 + args.steps]:
        one_step(x, y, True)
    total = sum(phases.values())

    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for x, y in batches[5:5 + min(args.steps, 20)]:
            one_step(x, y, False)
        sync(dev)
    events = prof.key_averages()
    n_prof = min(args.steps, 20)
    cuda = dev.type == "cuda"
    attr = ("self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total") \
        if cuda else "self_cpu_time_total"
    ops = [e for e in events if e.key.startswith("aten::")]  # operators (on a GPU: the time of their kernels)
    top = sorted(ops, key=lambda e: getattr(e, attr), reverse=True)[:12]
    ops_total = sum(getattr(e, attr) for e in ops) or 1
    kernels = [e for e in events if cuda and e.device_type.name == "CUDA"]
    launches = {"kernels_per_step": round(sum(e.count for e in kernels) / n_prof, 1),
                "kernel_ms_per_step": round(sum(getattr(e, attr) for e in kernels) / 1e3 / n_prof, 4)} if cuda else {}
    graph = captured_step(dev, args, teacher, taps, flow, student, batches[5]) if cuda else {}
    m = machine(dev)
    variant = ("bf16" if args.amp else "fp32") + (" + channels_last" if args.channels_last else "")
    rows = [f"| {k} | {v / args.steps * 1e3:.2f} | {100 * v / total:.1f} % |" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])]
    op_rows = [f"| `{e.key}` | {getattr(e, attr) / 1e3 / n_prof:.3f} | {100 * getattr(e, attr) / ops_total:.1f} % | {e.count // n_prof} |" for e in top]
    launch_line = (f"GPU kernels per step: {launches['kernels_per_step']:g}, busy {launches['kernel_ms_per_step']:.3f} ms "
                   f"(the sum of their run times; a captured graph replays them back to back).") if cuda else ""
    graph_lines = [
        f"As one CUDA graph (`fast.cuda_graph`, what an epoch replays): {graph['kernels_per_step']:g} kernels per step, "
        f"busy {graph['kernel_ms_per_step']:.3f} ms; a replay takes {graph['replay_ms']:.3f} ms. The eager warm-up step "
        f"({graph['warm_ms']:.1f} ms) and the capture ({graph['capture_ms']:.1f} ms) happen once per batch shape and "
        f"learning-rate phase of a stage, so a stage's first epoch of 391 steps costs about "
        f"{graph['epoch_estimate_s']:.3f} s and every later one about {391 * graph['replay_ms'] / 1e3:.3f} s, plus the "
        f"loader.", ""] if graph else []
    table = "\n".join([
        f"# Student information-flow step: where the time goes ({args.steps} steps of batch 128, {variant})", "",
        f"machine: {m.get('gpu') or m['device']}, torch {m['torch']}, {m['cpu_threads']} CPU threads, "
        f"{torch.get_num_threads()} intra-op, load average {m['loadavg']}, OMP_WAIT_POLICY {m['omp_wait_policy']}; "
        f"{'real CIFAR-10' if args.data else 'synthetic'} images", "",
        f"Per step {total / args.steps * 1e3:.2f} ms (phases synchronised); scaled to an epoch of 391 steps: "
        f"{total / args.steps * 391:.2f} s.", "",
        "| phase | ms / step | share |", "|---|---:|---:|", *rows, "", *([launch_line, ""] if launch_line else []), *graph_lines,
        f"Top operators by self {'device' if cuda else 'CPU'} time (profiler, {n_prof} steps):", "",
        "| operator | ms / step | share | calls / step |", "|---|---:|---:|---:|", *op_rows]) + "\n"
    doc = {"machine": m, "steps": args.steps, **launches, "graph": graph, "amp": args.amp, "channels_last": args.channels_last, "ms_per_step": round(total / args.steps * 1e3, 3),
           "phases_ms_per_step": {k: round(v / args.steps * 1e3, 3) for k, v in phases.items()},
           "top_ops": [{"op": e.key, "ms_per_step": round(getattr(e, attr) / 1e3 / n_prof, 4),
                        "calls_per_step": e.count // n_prof} for e in top]}
    suffix = ("" if dev.type == "cpu" else "_" + dev.type) + ("_bf16" if args.amp else "") + ("_cl" if args.channels_last else "")
    write("profile_student" + suffix + args.suffix, doc, table)


def captured_step(dev, args, teacher, taps, flow, student, batch) -> dict:
    """The same step captured as flowkd's loop does it (``StepGraph``): warm-up, capture, replay times, and
    the kernels one replay runs."""
    from torch.profiler import ProfilerActivity, profile

    from flowkd.graphs import StepGraph

    opt = torch.optim.Adam(student.parameters(), 1e-3, capturable=True, fused=True)
    x, y = (b.clone() for b in batch)

    def body():
        opt.zero_grad(set_to_none=False)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp, cache_enabled=False):
            loss = flow(teacher(x), taps(x)[1], 0)["loss"]
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    def clock(fn):
        sync(dev)
        t0 = time.perf_counter()
        out = fn()
        sync(dev)
        return out, (time.perf_counter() - t0) * 1e3

    _, warm = clock(lambda: StepGraph.warm(body))
    graph, capture = clock(lambda: StepGraph(body))
    graph()
    n = 200
    _, replays = clock(lambda: [graph() for _ in range(n)])
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            graph()
        sync(dev)
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    attr = "self_device_time_total" if events and hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    replay = replays / n
    return {"warm_ms": round(warm, 2), "capture_ms": round(capture, 2), "replay_ms": round(replay, 4),
            "kernels_per_step": round(sum(e.count for e in events) / 20, 1),
            "kernel_ms_per_step": round(sum(getattr(e, attr) for e in events) / 1e3 / 20, 4),
            "epoch_estimate_s": round((warm + capture + 390 * replay) / 1e3, 3)}


if __name__ == "__main__":
    main()
