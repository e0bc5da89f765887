"""The one training loop. Every stage and every baseline is a step (``flowkd.steps``) plugged into it.

``step(batch) -> {"loss": tensor, other named terms...}``, ``batch`` a :class:`~flowkd.teachers.Batch` (what
flowkd's ``Loader`` yields; a plain iterable's ``(x, y[, index])`` tuples are made into one). :func:`run_epochs`
drives one trainer or a cohort of them through the epochs; each :class:`~flowkd.trainer.Trainer` owns its stage's
state and every per-epoch value: the learning rate of each phase, the optimiser and its restarts, and the step's
``begin_epoch`` (where it writes the layer pairs' weights) before each epoch; plus the epoch averages of every
term and the non-finite check. The progress bar is here.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .errors import FlowKDError
from .graphs import StepGraph
from .steps import Step
from .teachers import as_batch
from .trainer import Trainer, lr_at, phase_at

__all__ = ["train", "Trainer", "run_epochs", "one_at_a_time", "lr_at", "phase_at", "check_plan", "check_anneal_average", "check_restart", "progress", "StepGraph", "RESTARTS", "ANNEALS"]

# the plan's checks live in flowkd.checks (config imports them too); re-exported here for the loop's callers
from .checks import ANNEALS, RESTARTS, check_anneal_average, check_plan, check_restart  # noqa: E402


def progress(iterable: Iterable, desc: str, total: int | None = None, enabled: bool = True):
    """A tqdm bar when wanted, installed and the output is a terminal; when wanted but the output is not a
    terminal (a log file: bars there become one line of tens of KB), one line when the loop is done."""
    if not enabled:
        return iterable
    if not sys.stderr.isatty():
        return _one_line(iterable, desc)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _one_line(iterable: Iterable, desc: str):
    t0, n = time.perf_counter(), 0
    for item in iterable:
        yield item
        n += 1
    print(f"{desc}: {n} batches in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)


def train(
    model: nn.Module,
    loader,
    step: Step,
    *,
    epochs: Sequence[int],
    lr: Sequence[float],
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    restart: str = "never",
    params: Iterable[torch.nn.Parameter] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    name: str = "train",
    show_progress: bool = True,
    autocast: torch.dtype | None = None,
    resume: dict | None = None,
    checkpoint: Callable[[Trainer], None] | None = None,
    cuda_graph: bool | type[StepGraph] = False,
    summary: bool | None = None,
    anneal: str = "none",
    average: int = 0,
    loss: nn.Module | None = None,
    checkpoint_s: float = 0.0,
) -> list[dict]:
    """Train ``model`` for ``sum(epochs)`` epochs; return one record per epoch (mean of every term).

    ``epochs``/``lr``: one entry per learning-rate phase (a single number is one phase). ``summary`` (default:
    ``show_progress``) prints one line when training ends, since the progress bars leave nothing on screen.

    ``restart`` says when the optimiser starts afresh: ``"never"`` (one optimiser for the stage), ``"phase"``
    (a new one at each learning-rate phase, as the paper's reference code does for the auxiliary teacher's
    stages) or ``"epoch"`` (a new one every epoch, as it does for the student). A restart zeroes the state in
    place (Adam's moments and step count, SGD's momentum), which gives a new optimiser's updates exactly.
    Before each epoch the loop sets the learning rate and calls the step's ``begin_epoch(epoch, records)``
    (the records of the epochs before: what an adaptive schedule follows), where a step writes its per-epoch
    values (the layer pairs' weights) in place.
    A non-finite term stops training with the stage, epoch and term named. ``autocast`` (e.g.
    ``torch.bfloat16``) runs the step under autocast; losses that need fp32 (PKT) compute in fp32.
    ``checkpoint(trainer)`` is called after every epoch (``trainer.state_dict()`` is the stage's whole state), or
    with ``checkpoint_s`` > 0 after the first epoch that ends that many seconds of training after the last call;
    ``resume=state`` (such a state) continues after the epoch it was saved at: weights, ``loss`` (a loss module
    with state of its own), optimiser, random state, records and weight average as they were (data order and
    augmentation depend only on the epoch, so the continuation is exact); the records returned are then the
    whole stage's.
    ``anneal="cosine"`` lets each phase's rate fall along a half cosine (:func:`lr_at`). ``average=N`` ends
    with the mean of the weights (and BatchNorm statistics) at the end of the last N epochs.
    ``cuda_graph=True`` replays the step (forward, loss, backward, optimiser step) as one captured CUDA graph
    (:class:`StepGraph`); the step must stay on the device (no host syncs). A captured step serves every
    epoch until the optimiser or the learning rate changes. Same arithmetic as the eager loop, but Adam is
    created ``capturable`` (its step counter lives on the device). Adam over parameters on a GPU is PyTorch's
    fused implementation (the same update, one kernel). A class in place of ``True`` stands in for
    :class:`StepGraph` (the tests check the graph path's bookkeeping on CPU with one).
    """
    tr = Trainer(model, step, epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay, restart=restart,
                 params=params, on_epoch=on_epoch, name=name, autocast=autocast, checkpoint=checkpoint,
                 cuda_graph=cuda_graph, anneal=anneal, average=average, loss=loss, checkpoint_s=checkpoint_s)
    if resume is not None:
        tr.load_state_dict(resume)
    errors = run_epochs(loader, [tr], show_progress=show_progress)  # a cohort of one
    if errors:
        raise next(iter(errors.values()))
    if (show_progress if summary is None else summary) and tr.records:
        print(tr.summary())
    return tr.records


def one_at_a_time(loader, active: Sequence[Trainer], cost: dict[str, float]) -> Iterator[None]:
    """One pass of ``loader``: each batch (one :class:`~flowkd.teachers.Batch`, so one memo, for every trainer)
    stepped by each trainer in turn; yields after each batch."""
    for batch in loader:
        batch = as_batch(batch)
        for t in active:
            t.batch(batch)
        yield


def run_epochs(loader, trainers: Sequence[Trainer], *, show_progress: bool = True,
               on_failure: Callable[[Trainer, FlowKDError], None] | None = None,
               run_epoch: Callable[..., Iterator[None]] = one_at_a_time) -> dict[str, FlowKDError]:
    """The one epoch loop, for one trainer (:func:`train`) or a cohort of them over the same batches
    (``flowkd.cohort``): each epoch, the loader's epoch, every trainer's ``begin``, one pass of the batches
    (``run_epoch(loader, active, cost)``: :func:`one_at_a_time`, or the cohort's students side by side, given
    ``cost``, each trainer's step time in the epoch before), every trainer's ``end``. A trainer resumed further
    on skips the epochs it has done; one with fewer epochs stops earlier; one that fails (a non-finite loss)
    stops with its error, the others go on. Returns the errors by trainer name."""
    failed: dict[str, FlowKDError] = {}
    cost: dict[str, float] = {}
    total = max(t.total for t in trainers)
    names = ", ".join(t.name for t in trainers)
    for epoch in range(min(t.first for t in trainers), total):
        active = [t for t in trainers if t.first <= epoch < t.total and t.name not in failed]
        if not active:
            continue
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for t in active:
            t.begin(epoch)
        t0 = time.perf_counter()
        label = active[0].name if len(trainers) == 1 else f"cohort ({names})"
        for _ in progress(run_epoch(loader, active, cost), f"{label} {epoch + 1}/{total}", total=len(loader),
                          enabled=show_progress):
            pass
        wall = time.perf_counter() - t0 if len(active) == 1 else None  # alone: the epoch's wall time
        cost = {t.name: t.time_s for t in active}
        for t in active:
            try:
                t.end(epoch, wall)
            except FlowKDError as e:
                failed[t.name] = e
                if on_failure is not None:
                    on_failure(t, e)
    return failed
