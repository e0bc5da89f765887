"""The one training loop. Every stage and every baseline is a ``step`` function plugged into it.

``step(x, y, epoch[, index]) -> {"loss": tensor, other named terms...}`` (``index`` when the loader yields
the batch's sample positions, as ``Loader(with_index=True)`` does); the loop owns the optimiser, the
learning-rate phases, the epoch averages of every term, the non-finite check, and the progress bar.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .errors import FlowKDError

__all__ = ["train", "lr_at", "progress"]

Step = Callable[[torch.Tensor, torch.Tensor, int], dict]


def lr_at(epoch: int, epochs: Sequence[int], lrs: Sequence[float]) -> float:
    """Piecewise-constant learning rate: ``epochs[i]`` epochs at ``lrs[i]``, phase after phase."""
    end = 0
    for n, lr in zip(epochs, lrs):
        end += n
        if epoch < end:
            return lr
    return lrs[-1]


def progress(iterable: Iterable, desc: str, total: int | None = None, enabled: bool = True):
    """tqdm when installed and wanted, else the plain iterable."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    raise FlowKDError(f"unknown optimizer {name!r}; valid: adam, sgd")


def train(
    model: nn.Module,
    loader,
    step: Step,
    *,
    epochs: Sequence[int],
    lr: Sequence[float],
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    fresh_optimizer_each_epoch: bool = False,
    params: Iterable[torch.nn.Parameter] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    name: str = "train",
    show_progress: bool = True,
    autocast: torch.dtype | None = None,
    resume: dict | None = None,
    checkpoint: Callable[[int, torch.optim.Optimizer], None] | None = None,
) -> list[dict]:
    """Train ``model`` for ``sum(epochs)`` epochs; return one record per epoch (mean of every term).

    ``fresh_optimizer_each_epoch`` re-creates the optimiser (and its Adam moments) at every epoch, as
    the paper's reference code does for the student; by default one optimiser lives for the whole stage.
    A non-finite term stops training with the stage, epoch and term named. ``autocast`` (e.g.
    ``torch.bfloat16``) runs the step under autocast; losses that need fp32 (PKT) compute in fp32.
    ``checkpoint(epoch, optimizer)`` is called after every epoch; ``resume={"epoch": e, "optimizer": state}``
    continues after epoch e (the model's weights are the caller's to restore; data order and augmentation
    depend only on the epoch, so the continuation is exact).
    """
    if len(epochs) != len(lr) or not epochs:
        raise FlowKDError(f"{name}: epochs {list(epochs)} and lr {list(lr)} must be non-empty lists of equal length")
    params = list(params) if params is not None else list(model.parameters())
    total = int(sum(epochs))
    opt = None
    records = []
    first = 0
    if resume is not None:
        first = int(resume["epoch"]) + 1
        if not fresh_optimizer_each_epoch and first < total:
            opt = _optimizer(optimizer, params, lr_at(first, epochs, lr), weight_decay)
            opt.load_state_dict(resume["optimizer"])
    for epoch in range(first, total):
        rate = lr_at(epoch, epochs, lr)
        if opt is None or fresh_optimizer_each_epoch:
            opt = _optimizer(optimizer, params, rate, weight_decay)
        for g in opt.param_groups:
            g["lr"] = rate
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        n_batches = 0
        t0 = time.perf_counter()
        for x, y, *index in progress(loader, f"{name} {epoch + 1}/{total}", total=len(loader), enabled=show_progress):
            if autocast is not None:
                with torch.autocast(device_type=x.device.type, dtype=autocast):
                    terms = step(x, y, epoch, *index)
            else:
                terms = step(x, y, epoch, *index)
            loss = terms["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in terms.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v.clone()
            n_batches += 1
        if n_batches == 0:
            raise FlowKDError(f"{name}: the training data gave no batch (empty dataset, or batch larger than the data with drop_last)")
        means = {k: float(v) / n_batches for k, v in sums.items()}
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            raise FlowKDError(f"{name}: non-finite loss at epoch {epoch} in term(s) {', '.join(bad)}")
        rec = {"stage": name, "epoch": epoch, "lr": rate, **means, "time_s": round(time.perf_counter() - t0, 4)}
        records.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
        if checkpoint is not None:
            checkpoint(epoch, opt)
    return records
