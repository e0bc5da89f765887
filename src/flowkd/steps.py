"""Training steps: what one batch does. The loop (``flowkd.loop``) owns everything else.

A step is called as ``step(x, y[, index]) -> {"loss": tensor, other named terms...}`` (``index``: the batch's
sample positions, when the loader yields them, ``Loader(with_index=True)``). A step never sees the epoch:
values that change from epoch to epoch (the layer pairs' weights) are device buffers that the loop writes
before each epoch, as it writes the learning rate; a step lists them in ``per_epoch`` (see
:class:`EpochValue`). So one captured CUDA graph of a step serves a whole stage.

- :class:`SupervisedStep`: cross-entropy on labels (the auxiliary teacher's first stage, a labels-only
  baseline, a teacher);
- :class:`DistillStep`: an information-flow loss between a teacher's features and the student's taps
  (one pair = PKT on the final representation; all pairs + a critical period = the student stage), optionally
  plus cross-entropy. A teacher is a network (read through ``FrozenTaps``), any callable
  ``images -> {tap: features}`` (e.g. a handcrafted extractor), or a ``FeatureBank`` of precomputed features
  looked up by the batch's sample positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FlowKDError
from .features import FeatureBank
from .flow import InformationFlowLoss
from .taps import FrozenTaps, Taps

__all__ = ["Step", "EpochValue", "SupervisedStep", "DistillStep"]

FeatureFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class EpochValue:
    """A per-epoch value of a step: ``buffer`` (a device tensor the step reads) gets ``at(epoch)`` before
    each epoch's first batch (written in place, so a captured step reads the new value)."""

    buffer: torch.Tensor
    at: Callable[[int], Sequence[float]]

    def write(self, epoch: int) -> None:
        self.buffer.copy_(torch.as_tensor(list(self.at(epoch)), dtype=self.buffer.dtype))


@runtime_checkable
class Step(Protocol):
    """What the loop calls per batch. ``per_epoch`` may be absent (a plain function has no per-epoch value)."""

    per_epoch: Sequence[EpochValue]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> dict: ...


class SupervisedStep:
    """Cross-entropy of ``model``'s logits with the labels."""

    per_epoch: Sequence[EpochValue] = ()

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, x, y, index=None):
        logits = self.model(x)
        try:
            ce = F.cross_entropy(logits, y)
        except IndexError:  # a label >= the number of outputs (CPU); the labels and the model disagree
            raise FlowKDError(f"{type(self.model).__name__} gives {logits.shape[-1]} outputs per image, but the labels "
                              f"go up to {int(y.max())}: build it with num_classes = the data's number of classes"
                              ) from None
        return {"loss": ce, "ce": ce.detach()}

    def close(self) -> None:
        pass


class DistillStep:
    """The information-flow step: ``teacher`` features vs the ``student``'s taps, optionally + cross-entropy.

    ``teacher`` is a network (its taps read frozen, ``FrozenTaps``), any callable ``images -> {tap: features}``,
    or a ``FeatureBank`` aligned with the loader's dataset (the step is then called with the batch's sample
    positions). Hooks stay on the models until ``close()`` (or the ``with`` block ends). ``gather``
    (distributed training) all-gathers both sides' features so PKT sees the global batch.
    """

    def __init__(self, student: nn.Module, teacher, flow: InformationFlowLoss, ce_weight: float = 0.0,
                 inference_teacher: bool = True, gather: Callable | None = None):
        if teacher is student:
            raise FlowKDError("DistillStep: the teacher is the student itself; every pair would compare a layer with "
                              "itself (the loss is 0 and nothing is learnt): give another network as teacher")
        self.teacher = (FrozenTaps(teacher, flow.teacher_taps, inference_teacher)
                        if isinstance(teacher, nn.Module) else teacher)
        if isinstance(self.teacher, FeatureBank):
            self.teacher.check_taps(flow.teacher_taps)
        self.taps = Taps(student, flow.student_taps)
        device = next((p.device for p in student.parameters()), None)
        if device is not None:
            flow.to(device)  # its per-epoch weights (and any trainable part, e.g. FitNets' regressor)
        self.flow, self.ce_weight, self.gather = flow, ce_weight, gather
        self.ddp = isinstance(student, nn.parallel.DistributedDataParallel)

    @property
    def per_epoch(self) -> Sequence[EpochValue]:
        return (EpochValue(self.flow.weight_buffer, self.flow.weights),)

    def __call__(self, x, y, index=None):
        if isinstance(self.teacher, FeatureBank):
            if index is None:
                raise FlowKDError("a teacher given as precomputed features needs the batch's sample positions: "
                                  "use Loader(..., with_index=True)")
            t = self.teacher.lookup(index, self.flow.teacher_taps)
        else:
            with torch.no_grad():
                t = self.teacher(x)
        out, s = self.taps(x)
        if self.gather is not None:  # distributed: the similarity batch is the global batch
            t = {k: self.gather(v.clone()) for k, v in t.items()}
            s = {k: self.gather(v) for k, v in s.items()}
        terms = self.flow(t, s)
        if self.ce_weight:
            ce = F.cross_entropy(out, y)
            terms["loss"] = terms["loss"] + self.ce_weight * ce
            terms["ce"] = ce.detach()
        elif self.ddp:  # DDP wants every parameter in the graph: the unused head gets a zero gradient
            terms["loss"] = terms["loss"] + 0.0 * out.float().sum()
        return terms

    def close(self) -> None:
        self.taps.remove()
        if isinstance(self.teacher, FrozenTaps):
            self.teacher.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
