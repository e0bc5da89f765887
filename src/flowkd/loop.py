"""The one training loop. Every stage and every baseline is a step (``flowkd.steps``) plugged into it.

``step(x, y[, index]) -> {"loss": tensor, other named terms...}`` (``index`` when the loader yields the batch's
sample positions, as ``Loader(with_index=True)`` does). The loop owns every per-epoch value: the learning rate
of each phase, the optimiser and its restarts, and the step's ``per_epoch`` buffers (the layer pairs'
weights), written before each epoch; plus the epoch averages of every term, the non-finite check, and the
progress bar. Eager and captured (CUDA graph) training share one step function, ``_one_step``.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .errors import FlowKDError, first_line
from .steps import Step

__all__ = ["train", "lr_at", "phase_at", "check_plan", "progress", "StepGraph", "RESTARTS"]

RESTARTS = ("never", "phase", "epoch")


def phase_at(epoch: int, epochs: Sequence[int]) -> int:
    """The learning-rate phase that ``epoch`` belongs to: ``epochs[i]`` epochs per phase, phase after phase."""
    end = 0
    for i, n in enumerate(epochs):
        end += n
        if epoch < end:
            return i
    return len(epochs) - 1


def lr_at(epoch: int, epochs: Sequence[int], lrs: Sequence[float]) -> float:
    """Piecewise-constant learning rate: ``epochs[i]`` epochs at ``lrs[i]``, phase after phase."""
    return lrs[phase_at(epoch, epochs)]


def check_plan(epochs, lr, where: str) -> tuple[list[int], list[float]]:
    """A stage's learning-rate phases: ``epochs[i]`` (an int >= 0) epochs at ``lr[i]`` (a finite number > 0).
    A single number stands for a one-phase list."""
    epochs = [epochs] if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) else epochs
    lr = [lr] if isinstance(lr, (int, float)) and not isinstance(lr, bool) else lr
    try:
        epochs, lr = list(epochs), list(lr)
    except TypeError:
        raise FlowKDError(f"{where}: epochs and lr must be lists (one entry per phase), got {epochs!r} and {lr!r}") from None
    if not epochs or len(epochs) != len(lr):
        raise FlowKDError(f"{where}: epochs {epochs} and lr {lr} must be non-empty lists of equal length "
                          "(one learning rate per phase)")
    bad = [e for e in epochs if isinstance(e, bool) or not isinstance(e, int) or e < 0]
    if bad:
        raise FlowKDError(f"{where}: epochs must be whole numbers >= 0, got {epochs}")
    bad = [r for r in lr if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0]
    if bad:
        raise FlowKDError(f"{where}: learning rates must be finite numbers > 0, got {lr}")
    return epochs, [float(r) for r in lr]


def progress(iterable: Iterable, desc: str, total: int | None = None, enabled: bool = True):
    """tqdm when installed and wanted, else the plain iterable."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _optimizer(name: str, params, lr: float, weight_decay: float, capturable: bool = False) -> torch.optim.Optimizer:
    params = list(params)
    if name == "adam":  # on a GPU, one fused kernel per step instead of a dozen multi-tensor ones
        fused = bool(params) and all(p.is_cuda for p in params)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, capturable=capturable, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    raise FlowKDError(f"unknown optimizer {name!r}; valid: adam, sgd")


class StepGraph:
    """One training step captured as a CUDA graph and replayed: a single launch instead of hundreds.

    ``body()`` runs the step on static input buffers and returns its terms; capture records its kernels
    without running them, and each call replays them, overwriting the same output tensors. ``warm(fn)``
    runs an eager step on a side stream first, as capture requires.
    """

    def __init__(self, body: Callable[[], dict]):
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.terms = body()
        except Exception as e:  # an op that cannot be captured (host sync, CPU tensor, ...)
            raise FlowKDError(f"fast.cuda_graph: the training step could not be captured as a CUDA graph "
                              f"({first_line(e)}); set fast.cuda_graph=false") from e

    def __call__(self) -> dict:
        self.graph.replay()
        return self.terms

    @staticmethod
    def warm(fn: Callable[[], dict]) -> dict:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = fn()
        torch.cuda.current_stream().wait_stream(side)
        return out


def _graph_epoch(loader, step: Step, opt, ctx: Callable, graph_cls: type[StepGraph], graphs: dict):
    """Yield each batch's terms, replaying captured steps. ``graphs`` lives for the whole stage: one captured
    step per batch shape, kept from epoch to epoch while nothing it has fixed in it changes (the optimiser
    object and the learning rate; the step's per-epoch values live in device memory the loop writes).
    A shape's first batch runs eagerly (warm-up; it also creates the gradients and the optimiser's state
    outside the capture: state first created inside it would be re-zeroed at every replay), then the step is
    captured on static buffers; the captured step zeroes the gradients in place and accumulates into them,
    so parameters the loss does not reach keep no gradient, as in the eager loop."""

    def eager(batch):  # gradients zeroed in place: the captured step reuses their memory
        return _one_step(batch, step, opt, ctx, set_to_none=False)

    key = (id(opt), opt.param_groups[0]["lr"])
    if graphs.get("key") != key:
        graphs.clear()
        graphs["key"] = key
    for batch in loader:
        shape = tuple(batch[0].shape)
        if shape in graphs:
            graph, static = graphs[shape]
            for dst, src in zip(static, batch):
                dst.copy_(src)
            terms = graph()
        else:
            terms = graph_cls.warm(lambda: eager(batch))
            static = [b.clone() for b in batch]
            graphs[shape] = (graph_cls(lambda s=static: eager(s)), static)
        yield terms


def _one_step(batch, step: Step, opt, ctx: Callable, set_to_none: bool) -> dict:
    """Forward, backward and optimiser step on one batch; the terms with a detached loss (no autograd graph
    kept alive, e.g. into a capture)."""
    opt.zero_grad(set_to_none=set_to_none)
    with ctx():
        terms = step(*batch)
    terms["loss"].backward()
    opt.step()
    return {**terms, "loss": terms["loss"].detach()}


def _eager_epoch(loader, step: Step, opt, ctx: Callable):
    for batch in loader:
        yield _one_step(batch, step, opt, ctx, set_to_none=True)


def _restart(opt: torch.optim.Optimizer) -> None:
    """What a new optimiser starts from, in place (Adam's moments and step count, SGD's momentum zeroed): the
    same updates as a new optimiser, and a captured step keeps the memory it reads."""
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                v.zero_()


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
    checkpoint: Callable[[int, torch.optim.Optimizer], None] | None = None,
    cuda_graph: bool | type[StepGraph] = False,
    summary: bool | None = None,
) -> list[dict]:
    """Train ``model`` for ``sum(epochs)`` epochs; return one record per epoch (mean of every term).

    ``epochs``/``lr``: one entry per learning-rate phase (a single number is one phase). ``summary`` (default:
    ``show_progress``) prints one line when training ends, since the progress bars leave nothing on screen.

    ``restart`` says when the optimiser starts afresh: ``"never"`` (one optimiser for the stage), ``"phase"``
    (a new one at each learning-rate phase, as the paper's reference code does for the auxiliary teacher's
    stages) or ``"epoch"`` (a new one every epoch, as it does for the student). A restart zeroes the state in
    place (Adam's moments and step count, SGD's momentum), which gives a new optimiser's updates exactly.
    Before each epoch the loop sets the learning rate and writes the step's ``per_epoch`` values.
    A non-finite term stops training with the stage, epoch and term named. ``autocast`` (e.g.
    ``torch.bfloat16``) runs the step under autocast; losses that need fp32 (PKT) compute in fp32.
    ``checkpoint(epoch, optimizer)`` is called after every epoch; ``resume={"epoch": e, "optimizer": state}``
    continues after epoch e (the model's weights are the caller's to restore; data order and augmentation
    depend only on the epoch, so the continuation is exact).
    ``cuda_graph=True`` replays the step (forward, loss, backward, optimiser step) as one captured CUDA graph
    (:class:`StepGraph`); the step must stay on the device (no host syncs). A captured step serves every
    epoch until the optimiser or the learning rate changes. Same arithmetic as the eager loop, but Adam is
    created ``capturable`` (its step counter lives on the device). Adam over parameters on a GPU is PyTorch's
    fused implementation (the same update, one kernel). A class in place of ``True`` stands in for
    :class:`StepGraph` (the tests check the graph path's bookkeeping on CPU with one).
    """
    epochs, lr = check_plan(epochs, lr, name)
    if restart not in RESTARTS:
        raise FlowKDError(f"{name}: restart must be one of {', '.join(RESTARTS)}, got {restart!r}")
    params = list(params) if params is not None else list(model.parameters())
    graph_cls = (StepGraph if cuda_graph is True else cuda_graph) or None
    capturable = graph_cls is StepGraph
    # a captured step re-casts the weights at every replay: no autocast weight cache across the capture
    ctx = (lambda: torch.autocast(device_type=params[0].device.type, dtype=autocast, cache_enabled=graph_cls is None)
           if autocast is not None else contextlib.nullcontext())
    per_epoch = getattr(step, "per_epoch", ())  # a plain function has no per-epoch value
    total = int(sum(epochs))
    opt = None
    graphs: dict = {}  # the stage's captured steps (cuda_graph)
    records = []
    first = 0
    if resume is not None:
        first = int(resume["epoch"]) + 1
        if first < total and _restarts(first, restart, epochs) is False:
            opt = _optimizer(optimizer, params, lr_at(first, epochs, lr), weight_decay, capturable)
            opt.load_state_dict(resume["optimizer"])
    for epoch in range(first, total):
        rate = lr_at(epoch, epochs, lr)
        if opt is None:
            opt = _optimizer(optimizer, params, rate, weight_decay, capturable)
        elif _restarts(epoch, restart, epochs):
            _restart(opt)
        for g in opt.param_groups:
            g["lr"] = rate
        for value in per_epoch:
            value.write(epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        n_batches = 0
        t0 = time.perf_counter()
        if graph_cls is not None:
            batches = _graph_epoch(loader, step, opt, ctx, graph_cls, graphs)
        else:
            batches = _eager_epoch(loader, step, opt, ctx)
        for terms in progress(batches, f"{name} {epoch + 1}/{total}", total=len(loader), enabled=show_progress):
            vals = [terms[k].detach().float() for k in sums] if sums.keys() == terms.keys() else None
            if vals and len({v.device for v in vals}) == 1:  # the usual case: one multi-tensor add for every term
                torch._foreach_add_(list(sums.values()), vals)
            else:
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
    if (show_progress if summary is None else summary) and records:
        last = records[-1]
        terms = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k in ("loss", "ce"))
        print(f"[{name}] {len(records)} epochs in {sum(r['time_s'] for r in records):.1f}s; last: {terms}")
    return records


def _restarts(epoch: int, restart: str, epochs: Sequence[int]) -> bool:
    """Whether the optimiser starts afresh at ``epoch`` (> 0): every epoch, or at a new learning-rate phase."""
    if restart == "epoch":
        return True
    return restart == "phase" and phase_at(epoch, epochs) != phase_at(epoch - 1, epochs)
