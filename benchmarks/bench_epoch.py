"""Epoch time of each training stage: a plain DataLoader + eager fp32 loop vs flowkd's loop, same run.

Stages (docs/method.md §3, CIFAR-10 shapes, batch 128): the student's information-flow epoch (4 pairs from the
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

from flowkd import Batch, CriticalPeriod, Constant, DistillStep, InformationFlowLoss, SupervisedStep, train
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
        step = DistillStep(model, teacher, flow, inference_teacher=False)
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y) if supervised else step(Batch(x, y))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    if not supervised:
        step.close()


def flowkd_epochs(model, teacher, flow, data, device, epochs, supervised=False, amp=False, channels_last=False,
                  graph=False) -> list[float]:
    """``epochs`` epochs of one stage through flowkd's loop; each epoch's synchronised wall time (the loop's
    records: loader, steps, and with ``graph`` the epoch's warm-up step and capture)."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    loader = Loader(data, 128, shuffle=True, augment=True, channels_last=channels_last)
    step = SupervisedStep(model) if supervised else DistillStep(model, teacher, flow)
    recs = train(model, loader, step, epochs=[epochs], lr=[1e-3], show_progress=False,
                 autocast=torch.bfloat16 if amp else None, cuda_graph=graph)
    if not supervised:
        step.close()
    return [r["time_s"] for r in recs]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2048, help="training images per epoch (synthetic unless --data)")
    ap.add_argument("--data", default="", help="a CIFAR-10 JPEG folder (cifar10/{train,test}/<class>/)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--stages", nargs="+", default=["student", "aux_pkt", "labels"])
    ap.add_argument("--epochs", type=int, default=3, help="epochs per flowkd variant: the first, then the steady ones")
    ap.add_argument("--naive-repeat", type=int, default=1, help="naive epochs (best of)")
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
    doc = {"machine": machine(dev), "images": len(images), "epochs": args.epochs, "runs": {}}
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
            model = make()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            if name.startswith("naive"):
                each = []
                for _ in range(args.naive_repeat):
                    sync(dev)
                    t0 = time.perf_counter()
                    naive_epoch(model, teacher, flow, images, labels, dev, supervised=sup)
                    sync(dev)
                    each.append(time.perf_counter() - t0)
                first, steady = each[0], min(each)
            else:
                each = flowkd_epochs(model, teacher, flow, data, dev, args.epochs, supervised=sup, **opts)
                first, steady = each[0], float(np.median(each[1:] if len(each) > 1 else each))
            peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
            times[name] = {"first_epoch_s": round(first, 3), "epoch_s": round(steady, 3), "epochs_s": [round(t, 3) for t in each],
                           "per_50k_s": round(steady * 50000 / len(images), 3), "peak_mib": peak}
        base = times[variants[0][0]]["epoch_s"]
        for name, t in times.items():
            t["speedup"] = round(base / t["epoch_s"], 2)
            rows.append(f"| {stage} | {name} | {t['first_epoch_s']:.3f} | {t['epoch_s']:.3f} | {t['per_50k_s']:.2f} | "
                        f"{t['speedup']:.2f}x | {'—' if t['peak_mib'] is None else round(t['peak_mib'])} |")
        doc["runs"][stage] = times
    m = doc["machine"]
    table = "\n".join([f"# Epoch time per stage ({len(images)} images, batch 128)", "",
                       f"machine: {m.get('gpu') or m['device']}, torch {m['torch']}, {m['cpu_threads']} CPU threads; "
                       f"flowkd: {args.epochs} epochs of one stage per variant, *epoch s* the median after the first "
                       f"(what every epoch of a stage costs); naive: best of {args.naive_repeat}", "",
                       "| stage | loop | first epoch s | epoch s | scaled to 50k s | vs naive | peak GPU MiB |",
                       "|---|---|---:|---:|---:|---:|---:|",
                       *rows]) + "\n"
    write("epoch" + ("" if dev.type == "cpu" else "_" + dev.type), doc, table)


if __name__ == "__main__":
    main()
