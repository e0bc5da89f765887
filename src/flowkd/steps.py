"""Training steps: what one batch does. The loop (``flowkd.loop``) owns everything else.

A step is called as ``step(batch) -> {"loss": tensor, other named terms...}``, ``batch`` being a
:class:`~flowkd.teachers.Batch` (images, labels, sample positions, a per-batch memo). The loop calls
``step.begin_epoch(epoch, records)`` before each epoch (``records``: the stage's records of the epochs before);
values that change from epoch to epoch (the layer pairs' weights) are device buffers the step writes there, in
place, so one captured CUDA graph of a step serves a whole stage.

- :class:`SupervisedStep`: cross-entropy on labels (the auxiliary teacher's first stage, a labels-only
  baseline, a teacher);
- :class:`DistillStep`: an information-flow loss between a teacher's features and the student's taps
  (one pair = PKT on the final representation; all pairs + a critical period = the student stage), optionally
  plus cross-entropy. The teacher is anything :func:`~flowkd.teachers.as_teacher` takes (a network, an
  extractor, precomputed features, a :class:`~flowkd.teachers.Teacher`); the step only calls it.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FlowKDError
from .flow import InformationFlowLoss
from .taps import Taps
from .teachers import Batch, as_teacher

__all__ = ["Step", "SupervisedStep", "DistillStep"]

@runtime_checkable
class Step(Protocol):
    """What the loop calls: ``begin_epoch`` before each epoch (a plain function, which has no per-epoch value,
    may lack it), the step per batch."""

    def begin_epoch(self, epoch: int, records: Sequence[dict] = ()) -> None: ...

    def __call__(self, batch: Batch) -> dict: ...


class SupervisedStep:
    """Cross-entropy of ``model``'s logits with the labels."""

    def __init__(self, model: nn.Module):
        self.model = model

    def begin_epoch(self, epoch: int, records: Sequence[dict] = ()) -> None:
        pass

    def __call__(self, batch: Batch) -> dict:
        logits = self.model(batch.x)
        try:
            ce = F.cross_entropy(logits, batch.y)
        except IndexError:  # a label >= the number of outputs (CPU); the labels and the model disagree
            raise FlowKDError(f"{type(self.model).__name__} gives {logits.shape[-1]} outputs per image, but the labels "
                              f"go up to {int(batch.y.max())}: build it with num_classes = the data's number of classes"
                              ) from None
        return {"loss": ce, "ce": ce.detach()}

    def close(self) -> None:
        pass


class DistillStep:
    """The information-flow step: ``teacher`` features vs the ``student``'s taps, optionally + cross-entropy.

    ``teacher``: anything :func:`~flowkd.teachers.as_teacher` takes; it is asked for the flow's teacher taps
    (``inference_teacher``: a network's pass runs in inference mode, else under ``no_grad``). The step reads
    ``self.teacher`` and closes it with its own hooks on ``close()`` (or when the ``with`` block ends).
    ``gather`` (distributed training) all-gathers both sides' features so PKT sees the global batch.
    """

    def __init__(self, student: nn.Module, teacher, flow: InformationFlowLoss, ce_weight: float = 0.0,
                 inference_teacher: bool = True, gather: Callable | None = None):
        if teacher is student:
            raise FlowKDError("DistillStep: the teacher is the student itself; every pair would compare a layer with "
                              "itself (the loss is 0 and nothing is learnt): give another network as teacher")
        self.teacher = as_teacher(teacher, flow.teacher_taps, inference_teacher)
        self.taps = Taps(student, flow.student_taps)
        device = next((p.device for p in student.parameters()), None)
        if device is not None:
            flow.to(device)  # its per-epoch weights (and any trainable part, e.g. FitNets' regressor)
        self.flow, self.ce_weight, self.gather = flow, ce_weight, gather
        self.ddp = isinstance(student, nn.parallel.DistributedDataParallel)

    def begin_epoch(self, epoch: int, records: Sequence[dict] = ()) -> None:
        """The layer pairs' weights of ``epoch``, written in place (``InformationFlowLoss.begin_epoch``)."""
        self.flow.begin_epoch(epoch, records)

    def __call__(self, batch: Batch) -> dict:
        with torch.no_grad():
            t = self.teacher(batch)
        out, s = self.taps(batch.x)
        if self.gather is not None:  # distributed: the similarity batch is the global batch
            t = {k: self.gather(v.clone()) for k, v in t.items()}
            s = {k: self.gather(v) for k, v in s.items()}
        terms = self.flow(t, s, memo=batch.memo)
        if self.ce_weight:
            ce = F.cross_entropy(out, batch.y)
            terms["loss"] = terms["loss"] + self.ce_weight * ce
            terms["ce"] = ce.detach()
        elif self.ddp:  # DDP wants every parameter in the graph: the unused head gets a zero gradient
            terms["loss"] = terms["loss"] + 0.0 * out.float().sum()
        return terms

    def close(self) -> None:
        self.taps.remove()
        self.teacher.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
