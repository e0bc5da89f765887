"""The three kinds of training step that every stage (and baseline) is made of.

- ``supervised_step``: cross-entropy on labels (stage A, the labels-only baseline, a teacher);
- ``distill_step``: an information-flow loss between teacher features and the student's taps (stage B
  with a single pair = PKT on the final representation; stage C with all pairs and a critical-period
  schedule), optionally plus cross-entropy;
- teachers are anything that maps a batch to ``{tap spec: (N, D) features}``: ``TeacherFeatures`` wraps
  a network (eval mode, no gradients); a callable (e.g. a handcrafted extractor) works the same way; a
  ``FeatureBank`` (precomputed features) is looked up by the batch's sample positions instead.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FlowKDError
from .features import FeatureBank
from .flow import InformationFlowLoss
from .taps import Taps

__all__ = ["TeacherFeatures", "supervised_step", "distill_step"]

FeatureFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


class TeacherFeatures:
    """A frozen network's tap outputs: eval mode (BN running statistics), no autograd."""

    def __init__(self, model: nn.Module, taps, inference_mode: bool = True):
        self.model = model
        self.taps = Taps(model, taps)
        self.inference_mode = inference_mode

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        was = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode() if self.inference_mode else torch.no_grad():
                return self.taps(x)[1]
        finally:
            self.model.train(was)

    def remove(self) -> None:
        self.taps.remove()


def supervised_step(model: nn.Module) -> Callable:
    def step(x, y, epoch, index=None):
        ce = F.cross_entropy(model(x), y)
        return {"loss": ce, "ce": ce.detach()}

    step.prepare = lambda epoch: ()  # the same step every epoch (a captured graph serves the whole stage)
    return step


class distill_step:
    """The information-flow step: ``teacher`` features vs the ``student``'s taps, optionally + cross-entropy.

    ``teacher`` is a network (wrapped in ``TeacherFeatures`` on ``flow.teacher_taps``), any callable
    ``images -> {tap: features}``, or a ``FeatureBank`` aligned with the loader's dataset (the step is then
    called with the batch's sample positions, ``Loader(with_index=True)``). Hooks stay on the student until
    ``close()`` (or the ``with`` block ends).
    ``gather`` (distributed training) all-gathers both sides' features so PKT sees the global batch.
    """

    def __init__(self, student: nn.Module, teacher, flow: InformationFlowLoss, ce_weight: float = 0.0,
                 inference_teacher: bool = True, gather: Callable | None = None):
        self.teacher = (TeacherFeatures(teacher, flow.teacher_taps, inference_teacher)
                        if isinstance(teacher, nn.Module) else teacher)
        if isinstance(self.teacher, FeatureBank):
            self.teacher.check_taps(flow.teacher_taps)
        self.taps = Taps(student, flow.student_taps)
        self.flow, self.ce_weight, self.gather = flow, ce_weight, gather
        self.ddp = isinstance(student, nn.parallel.DistributedDataParallel)

    def __call__(self, x, y, epoch, index=None):
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
        terms = self.flow(t, s, epoch)
        if self.ce_weight:
            ce = F.cross_entropy(out, y)
            terms["loss"] = terms["loss"] + self.ce_weight * ce
            terms["ce"] = ce.detach()
        elif self.ddp:  # DDP wants every parameter in the graph: the unused head gets a zero gradient
            terms["loss"] = terms["loss"] + 0.0 * out.float().sum()
        return terms

    def prepare(self, epoch: int) -> tuple:
        """Called by the loop before each epoch: the flow's weights go to the student's device; returns what a
        captured step depends on beyond device memory (see ``InformationFlowLoss.prepare``)."""
        device = next(iter(self.taps.model.parameters())).device
        return (self.flow.prepare(epoch, device), self.ce_weight)

    def close(self) -> None:
        self.taps.remove()
        if isinstance(self.teacher, TeacherFeatures):
            self.teacher.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
