"""The three kinds of training step that every stage (and baseline) is made of.

- ``supervised_step``: cross-entropy on labels (stage A, the labels-only baseline, a teacher);
- ``distill_step``: an information-flow loss between teacher features and the student's taps (stage B
  with a single pair = PKT on the final representation; stage C with all pairs and a critical-period
  schedule), optionally plus cross-entropy;
- teachers are anything that maps a batch to ``{tap spec: (N, D) features}``: ``TeacherFeatures`` wraps
  a network (eval mode, no gradients); a callable (e.g. a handcrafted extractor) works the same way.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .flow import InformationFlowLoss
from .taps import Taps

__all__ = ["TeacherFeatures", "supervised_step", "distill_step"]

FeatureFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


class TeacherFeatures:
    """A frozen network's tap outputs: eval mode (BN running statistics), no autograd."""

    def __init__(self, model: nn.Module, taps):
        self.model = model
        self.taps = Taps(model, taps)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        was = self.model.training
        self.model.eval()
        try:
            return self.taps(x)[1]
        finally:
            self.model.train(was)

    def remove(self) -> None:
        self.taps.remove()


def supervised_step(model: nn.Module) -> Callable:
    def step(x, y, epoch):
        ce = F.cross_entropy(model(x), y)
        return {"loss": ce, "ce": ce.detach()}

    return step


def distill_step(student: nn.Module, teacher: FeatureFn, flow: InformationFlowLoss,
                 ce_weight: float = 0.0) -> tuple[Callable, Taps]:
    """The step, and the student's taps (call ``.remove()`` when the stage ends)."""
    taps = Taps(student, flow.student_taps)

    def step(x, y, epoch):
        with torch.no_grad():
            t = teacher(x)
        out, s = taps(x)
        terms = flow(t, s, epoch)
        if ce_weight:
            ce = F.cross_entropy(out, y)
            terms["loss"] = terms["loss"] + ce_weight * ce
            terms["ce"] = ce.detach()
        return terms

    return step, taps
