"""A stage's training state and the plan it follows: :class:`Trainer` owns the model, the loss, the optimiser
and its restarts, the random state, the per-epoch records, the weight average and the stage's training time,
and applies the plan's rules (phases, annealing, restarts, averaging, :func:`lr_at`) epoch by epoch. What drives
trainers through the batches is ``flowkd.loop``; eager and captured (CUDA graph) steps share one step function,
``one_step`` (``flowkd.graphs``).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Sequence

import torch
from torch import nn

from .checks import ANNEALS, check_anneal_average, check_plan, check_restart
from .errors import FlowKDError
from .graphs import GraphSteps, StepGraph, one_step
from .steps import Step
from .taps import unwrap
from .teachers import as_batch

__all__ = ["Trainer", "lr_at", "phase_at"]


def phase_at(epoch: int, epochs: Sequence[int]) -> int:
    """The learning-rate phase that ``epoch`` belongs to: ``epochs[i]`` epochs per phase, phase after phase."""
    end = 0
    for i, n in enumerate(epochs):
        end += n
        if epoch < end:
            return i
    return len(epochs) - 1


def lr_at(epoch: int, epochs: Sequence[int], lrs: Sequence[float], anneal: str = "none") -> float:
    """The learning rate of ``epoch``: ``epochs[i]`` epochs at ``lrs[i]``, phase after phase. ``anneal="cosine"``
    lets each phase's rate fall from ``lrs[i]`` along a half cosine, epoch by epoch, towards zero (its last
    epoch runs at ``lrs[i] * (1 + cos(pi (n-1)/n)) / 2``); a next phase starts again at its own rate."""
    i = phase_at(epoch, epochs)
    if anneal == "none":
        return lrs[i]
    if anneal != "cosine":
        raise FlowKDError(f"lr_anneal must be one of {', '.join(ANNEALS)}, got {anneal!r}")
    into = epoch - sum(epochs[:i])
    return lrs[i] * 0.5 * (1.0 + math.cos(math.pi * into / epochs[i]))


def _optimizer(name: str, params, lr: float, weight_decay: float, capturable: bool = False) -> torch.optim.Optimizer:
    params = list(params)
    if name == "adam":  # on a GPU, one fused kernel per step instead of a dozen multi-tensor ones
        fused = bool(params) and all(p.is_cuda for p in params)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, capturable=capturable, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    raise FlowKDError(f"unknown optimizer {name!r}; valid: adam, sgd")


def _restart(opt: torch.optim.Optimizer) -> None:
    """What a new optimiser starts from, in place (Adam's moments and step count, SGD's momentum zeroed): the
    same updates as a new optimiser, and a captured step keeps the memory it reads."""
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                v.zero_()


_STATE_KEYS = ("epoch", "model", "loss", "optimizer", "rng", "records", "average", "train_s")


class Trainer:
    """One model's training, epoch by epoch, over batches it is handed: ``begin(epoch)``, ``batch(b)`` per
    batch, ``end(epoch)``. :func:`run_epochs` drives one or several over the same batches (:func:`train`: one).
    The arguments are :func:`train`'s; ``loss``: a loss module with state of its own (a trainable part, e.g.
    FitNets' regressor), saved and restored with the model.

    The trainer owns the stage's whole training state: ``state_dict()`` (the model, the loss, the optimiser,
    the random state, the records, the weight average, the training time so far, after the last complete
    epoch) is what a checkpoint saves, and ``load_state_dict()`` continues from it exactly. ``checkpoint(trainer)``
    is called after an epoch once ``checkpoint_s`` seconds of training have passed since the last call (0: after
    every epoch): a run of short epochs does not spend its time writing checkpoints."""

    def __init__(self, model: nn.Module, step: Step, *, epochs, lr, optimizer: str = "adam", weight_decay: float = 0.0,
                 restart: str = "never", params=None, on_epoch=None, name: str = "train", autocast=None,
                 checkpoint=None, cuda_graph: bool | type[StepGraph] = False, anneal: str = "none", average: int = 0,
                 loss: nn.Module | None = None, checkpoint_s: float = 0.0):
        self.epochs, self.lr = check_plan(epochs, lr, name)
        check_anneal_average(anneal, average, self.epochs, name)
        self.anneal, self.average = anneal, average
        self.avg, self.n_avg = None, 0  # the running mean of the last epochs' weights
        check_restart(restart, name)
        self.model, self.step, self.name, self.restart, self.loss = model, step, name, restart, loss
        self.optimizer, self.weight_decay, self.on_epoch, self.checkpoint = optimizer, weight_decay, on_epoch, checkpoint
        if not checkpoint_s >= 0:
            raise FlowKDError(f"{name}: checkpoint_s must be a number of seconds >= 0, got {checkpoint_s!r}")
        self.checkpoint_s = float(checkpoint_s)  # training seconds between checkpoints (0: after every epoch)
        self.params = list(params) if params is not None else list(model.parameters())
        graph_cls = (StepGraph if cuda_graph is True else cuda_graph) or None
        self.graphs = GraphSteps(graph_cls) if graph_cls is not None else None
        self.capturable = graph_cls is StepGraph
        # a captured step re-casts the weights at every replay: no autocast weight cache across the capture
        self.ctx = (lambda: torch.autocast(device_type=self.params[0].device.type, dtype=autocast,
                                           cache_enabled=graph_cls is None)
                    if autocast is not None else contextlib.nullcontext())
        self.total = int(sum(self.epochs))
        self.opt, self.records, self.first, self.done = None, [], 0, -1
        self.train_s = 0.0  # the stage's training time so far (every segment of a resumed stage)
        self.saved_s = 0.0  # ``train_s`` when the last checkpoint was taken

    def state_dict(self) -> dict:
        """The stage's training state after its last complete epoch: a snapshot (tensors copied to the CPU)."""
        return _snapshot({"epoch": self.done, "model": unwrap(self.model).state_dict(),
                          "loss": self.loss.state_dict() if self.loss is not None else {},
                          "optimizer": self.opt.state_dict() if self.opt is not None else None,
                          "rng": torch.get_rng_state(), "records": self.records,
                          "average": self.average_state(), "train_s": self.train_s})

    def load_state_dict(self, state: dict) -> None:
        """Continue after ``state["epoch"]``: the weights, the loss, the random state, the records, the weight
        average and the training time as they were then; the optimiser too, unless it starts afresh at the
        next epoch anyway."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise FlowKDError(f"{self.name}: the saved training state lacks {', '.join(missing)} (written by another "
                              "flowkd version?); train this stage again from its start")
        self.done = int(state["epoch"])
        self.first = self.done + 1
        unwrap(self.model).load_state_dict(state["model"])
        if self.loss is not None:
            self.loss.load_state_dict(state["loss"])
        torch.set_rng_state(state["rng"].cpu())
        self.records = [dict(r) for r in state["records"]]
        self.train_s = self.saved_s = float(state["train_s"])
        if self.first < self.total and _restarts(self.first, self.restart, self.epochs) is False:
            self.opt = self._new_optimizer(lr_at(self.first, self.epochs, self.lr, self.anneal))
            self.opt.load_state_dict(state["optimizer"])
        avg = state["average"]
        if avg.get("n", 0):
            self.n_avg = int(avg["n"])
            self.avg = [t.to(v.device) for t, v in zip(avg["tensors"], self._live())]

    def _new_optimizer(self, rate: float) -> torch.optim.Optimizer:
        return _optimizer(self.optimizer, self.params, rate, self.weight_decay, self.capturable)

    def begin(self, epoch: int) -> None:
        """Before the epoch's first batch: the learning rate, a restart, the step's ``begin_epoch``."""
        self.t_epoch = time.perf_counter()
        self.rate = lr_at(epoch, self.epochs, self.lr, self.anneal)
        if self.opt is None:
            self.opt = self._new_optimizer(self.rate)
        elif _restarts(epoch, self.restart, self.epochs):
            _restart(self.opt)
        for g in self.opt.param_groups:
            g["lr"] = self.rate
        begin_epoch = getattr(self.step, "begin_epoch", None)  # a plain function has no per-epoch value
        if begin_epoch is not None:
            begin_epoch(epoch, self.records)
        if self.graphs is not None:
            self.graphs.begin(self.opt)
        self.model.train()
        self.sums: dict[str, torch.Tensor] = {}
        self.n_batches, self.time_s = 0, 0.0

    def batch(self, batch) -> None:
        t0 = time.perf_counter()
        batch = as_batch(batch)
        if self.graphs is not None:
            terms = self.graphs(batch, self.step, self.opt, self.ctx)
        else:
            terms = one_step(batch, self.step, self.opt, self.ctx, set_to_none=True)
        sums = self.sums
        vals = [terms[k].detach().float() for k in sums] if sums.keys() == terms.keys() else None
        if vals and len({v.device for v in vals}) == 1:  # the usual case: one multi-tensor add for every term
            torch._foreach_add_(list(sums.values()), vals)
        else:
            for k, v in terms.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v.clone()
        self.n_batches += 1
        self.time_s += time.perf_counter() - t0

    def end(self, epoch: int, wall_s: float | None = None) -> dict:
        """After the epoch's last batch: the epoch's means (a non-finite one stops training), the record, the
        callbacks. ``wall_s``: the epoch's time when this trainer had the loader to itself."""
        if self.n_batches == 0:
            raise FlowKDError(f"{self.name}: the training data gave no batch (empty dataset, or batch larger than "
                              "the data with drop_last)")
        means = {k: float(v) / self.n_batches for k, v in self.sums.items()}
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            raise FlowKDError(f"{self.name}: non-finite loss at epoch {epoch} in term(s) {', '.join(bad)}")
        rec = {"stage": self.name, "epoch": epoch, "lr": self.rate, **means,
               "time_s": round(self.time_s if wall_s is None else wall_s, 4)}
        self.records.append(rec)
        if self.on_epoch is not None:
            self.on_epoch(rec)
        self._average(epoch)
        self.done = epoch
        self.train_s += time.perf_counter() - self.t_epoch
        if self.checkpoint is not None and self.train_s - self.saved_s >= self.checkpoint_s:
            self.checkpoint(self)
            self.saved_s = self.train_s
        return rec

    def _live(self) -> list[torch.Tensor]:
        """The model's floating-point weights and buffers (BatchNorm statistics too), as live storage."""
        return [v for v in self.model.state_dict().values() if v.is_floating_point()]

    def _average(self, epoch: int) -> None:
        """Weight averaging: the running mean of the weights at the end of each of the last ``average`` epochs
        (BatchNorm statistics averaged alike); after the last epoch the model takes the mean."""
        if not self.average or epoch < self.total - self.average:
            return
        live = self._live()
        if self.avg is None:
            self.avg, self.n_avg = [v.detach().clone() for v in live], 1
        else:
            self.n_avg += 1
            torch._foreach_lerp_(self.avg, live, 1.0 / self.n_avg)
        if epoch == self.total - 1:
            with torch.no_grad():
                torch._foreach_copy_(live, self.avg)

    def average_state(self) -> dict:
        """What a resumed trainer needs to continue the average exactly (empty before it starts)."""
        return {"n": self.n_avg, "tensors": [t.detach().cpu() for t in self.avg]} if self.avg is not None else {}

    def summary(self) -> str:
        last = self.records[-1] if self.records else {}
        terms = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k in ("loss", "ce"))
        return f"[{self.name}] {len(self.records)} epochs in {sum(r['time_s'] for r in self.records):.1f}s; last: {terms}"


def _snapshot(x):
    """A copy of ``x`` (nested dicts and lists) with every tensor copied to the CPU."""
    if torch.is_tensor(x):
        return x.detach().to("cpu", copy=True)
    if isinstance(x, dict):
        return {k: _snapshot(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_snapshot(v) for v in x)
    return x


def _restarts(epoch: int, restart: str, epochs: Sequence[int]) -> bool:
    """Whether the optimiser starts afresh at ``epoch`` (> 0): every epoch, or at a new learning-rate phase."""
    if restart == "epoch":
        return True
    return restart == "phase" and phase_at(epoch, epochs) != phase_at(epoch - 1, epochs)
