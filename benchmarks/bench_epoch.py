"""Epoch time of each training stage: a plain DataLoader + eager fp32 loop vs flowkd's loop, same run.

Stages (METHOD.md §3, CIFAR-10 shapes, batch 128): the student's information-flow epoch (4 pairs from the
auxiliary "tiny" CNN), the auxiliary PKT epoch (ResNet-18 teacher, final representation), and the
labels-only very-tiny epoch. The baseline decodes nothing either (the uint8 array is given) but augments
and normalises per sample in a torch DataLoader on the CPU, as the reference code's transforms do; flowkd
keeps the data on the device and augments whole batches there, optionally with bf16 autocast and
channels_last. Peak GPU memory is reported per stage on CUDA.

    python benchmarks/bench_epoch.py --images 2048                 # CPU: a subset, every stage
    python benchmarks/bench_epoch.py --data .devdata/cifar10       # real CIFAR-10 images (cached decode)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import machine, sync, write

from flowkd import CriticalPeriod, Constant, InformationFlowLoss, distill_step, supervised_step, train
from flowkd.data.arrays import ArrayDataset, Loader
from flowkd.models import create_model

MEAN, STD = (125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)


class PerSampleCifar(torch.utils.data.Dataset):
    """The plain way: one image at a time, pad + crop + flip + normalise in the worker."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 0):
        self.images, self.labels = images, labels
        self.rng = np.random.default_rng(seed)
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = np.pad(self.images[i], ((0, 0), (4, 4), (4, 4)))
        y0, x0 = self.rng.integers(0, 9, 2)
        img = img[:, y0:y0 + 32, x0:x0 + 32]
        if self.rng.random() < 0.5:
            img = img[:, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255)
        return (x - self.mean) / self.std, int(self.labels[i])


def naive_epoch(model, teacher, flow, images, labels, device, supervised=False):
    loader = torch.utils.data.DataLoader(PerSampleCifar(images, labels), batch_size=128, shuffle=True, num_workers=0)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    if not supervised:
        step = distill_step(model, teacher, flow, inference_teacher=False)
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y) if supervised else step(x, y, 0)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    if not supervised:
        step.close()


def flowkd_epoch(model, teacher, flow, data, device, supervised=False, amp=False, channels_last=False, graph=False):
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    loader = Loader(data, 128, shuffle=True, augment=True, channels_last=channels_last)
    step = supervised_step(model) if supervised else distill_step(model, teacher, flow)
    train(model, loader, step, epochs=[1], lr=[1e-3], show_progress=False,
          autocast=torch.bfloat16 if amp else None, cuda_graph=graph)
    if not supervised:
        step.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2048, help="training images per epoch (synthetic unless --data)")
    ap.add_argument("--data", default="", help="a CIFAR-10 JPEG folder (cifar10/{train,test}/<class>/)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--stages", nargs="+", default=["student", "aux_pkt", "labels"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--naive-repeat", type=int, default=0, help="repeats of the naive loop (default: --repeat)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # every variant alike (as flowkd's pipeline does on CUDA)
    if args.data:
        from flowkd.data.readers import load_dataset
        tr, _ = load_dataset("cifar10_jpg", args.data)
        images, labels = tr.images[: args.images].numpy(), tr.labels[: args.images].numpy()
    else:
        g = np.random.default_rng(0)
        images = g.integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8)
        labels = g.integers(0, 10, args.images)
    data = ArrayDataset(images, labels, [str(c) for c in range(10)], MEAN, STD).to(dev)
    variants = [("naive DataLoader, fp32", {}), ("flowkd, fp32", {}), ("flowkd, bf16 + channels_last", {"amp": True, "channels_last": True})]
    if dev.type == "cuda":  # the whole step as one captured CUDA graph per epoch
        variants += [("flowkd, fp32 + CUDA graph", {"graph": True}),
                     ("flowkd, bf16 + channels_last + CUDA graph", {"amp": True, "channels_last": True, "graph": True})]
    doc = {"machine": machine(dev), "images": len(images), "runs": {}}
    rows = []
    for stage in args.stages:
        torch.manual_seed(0)
        if stage == "student":
            teacher, make = create_model("tiny").to(dev), lambda: create_model("verytiny").to(dev)
            flow = InformationFlowLoss([("pool1", "pool1"), ("pool2", "pool2"), ("pool3", "pool3"), ("fc1_relu", "fc1_relu")], CriticalPeriod())
        elif stage == "aux_pkt":
            teacher, make = create_model("preact_resnet18").to(dev), lambda: create_model("tiny").to(dev)
            flow = InformationFlowLoss([("linear:input", "fc1_relu")], Constant())
        else:
            teacher, make, flow = None, lambda: create_model("verytiny").to(dev), None
        sup = stage == "labels"
        times = {}
        for name, opts in variants:
            best = float("inf")
            for _ in range((args.naive_repeat or args.repeat) if name.startswith("naive") else args.repeat):
                model = make()
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                sync(dev)
                t0 = time.perf_counter()
                if name.startswith("naive"):
                    naive_epoch(model, teacher, flow, images, labels, dev, supervised=sup)
                else:
                    flowkd_epoch(model, teacher, flow, data, dev, supervised=sup, **opts)
                sync(dev)
                best = min(best, time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
            times[name] = {"epoch_s": round(best, 3), "per_50k_s": round(best * 50000 / len(images), 2), "peak_mib": peak}
        base = times[variants[0][0]]["epoch_s"]
        for name, t in times.items():
            t["speedup"] = round(base / t["epoch_s"], 2)
            rows.append(f"| {stage} | {name} | {t['epoch_s']:.2f} | {t['per_50k_s']:.1f} | {t['speedup']:.2f}x | "
                        f"{'—' if t['peak_mib'] is None else round(t['peak_mib'])} |")
        doc["runs"][stage] = times
    m = doc["machine"]
    table = "\n".join([f"# Epoch time per stage ({len(images)} images, batch 128; best of {args.repeat})", "",
                       f"machine: {m.get('gpu') or m['device']}, torch {m['torch']}, {m['cpu_threads']} CPU threads", "",
                       "| stage | loop | epoch s | scaled to 50k s | vs naive | peak GPU MiB |", "|---|---|---:|---:|---:|---:|",
                       *rows]) + "\n"
    write("epoch" + ("" if dev.type == "cpu" else "_" + dev.type), doc, table)


if __name__ == "__main__":
    main()
