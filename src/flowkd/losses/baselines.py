"""Classic KD baselines as teacher/student pair losses: Hinton KD, FitNets, attention transfer, SP.

Each loss is a small module whose ``forward(teacher, student)`` (teacher first) returns a scalar,
computed in float32 with autocast off, so bf16/fp16 inputs give a float32, finite loss.
``PAIR_LOSSES`` names them (plus PKT) for configs: ``make_pair_loss(name, teacher_shape,
student_shape, **options)``, with the shapes per sample (no batch dimension).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import PosFloat, PosInt, check_options
from ..errors import FlowKDError
from ..registry import Registry
from .pkt import PKTLoss

__all__ = [
    "HintonKD", "FitNetHint", "AttentionTransfer", "SimilarityPreserving", "PAIR_LOSSES", "make_pair_loss",
]


def _same_batch(name: str, teacher: torch.Tensor, student: torch.Tensor) -> None:
    if teacher.ndim == 0 or student.ndim == 0 or teacher.shape[0] != student.shape[0]:
        raise FlowKDError(
            f"{name} needs the same batch on both sides: teacher {tuple(teacher.shape)}, student {tuple(student.shape)}"
        )


def _pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)


def _common_size(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    return min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1])


class HintonKD(nn.Module):
    """Hinton et al. soft-target loss on logits (N x C): ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    The KL is summed over classes and averaged over the batch. Only the distillation term: the
    cross-entropy on the labels is added by the training stage, not here.
    """

    bank_dtype = "float32"  # a bank of teacher views keeps the logits as they are (40 bytes for 10 classes)

    def __init__(self, temperature: PosFloat = 4.0):
        super().__init__()
        check_options(HintonKD, {"temperature": temperature}, "kd")
        self.temperature = float(temperature)

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        if teacher.ndim != 2 or teacher.shape != student.shape:
            raise FlowKDError(
                "kd needs logits of the same shape (N, C): "
                f"teacher {tuple(teacher.shape)}, student {tuple(student.shape)}"
            )
        T = self.temperature
        with torch.autocast(device_type=student.device.type, enabled=False):
            log_p = F.log_softmax(teacher.float() / T, dim=1)
            log_q = F.log_softmax(student.float() / T, dim=1)
            return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * T * T

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class FitNetHint(nn.Module):
    """FitNets hint: MSE between the teacher and a learned regression of the student.

    Shapes are per sample: (C, H, W) maps get a bias-free ``Conv2d(Cs, Ct, kernel_size)`` ("same"
    padding), (D,) vectors a bias-free ``Linear(Ds, Dt)``. Maps whose spatial sizes differ are
    compared after adaptive-average-pooling the larger one (the regressed student, or the teacher)
    to the smaller size. The regressor's parameters are this module's: optimise them with the student.
    """

    def __init__(self, teacher_shape: Sequence[int], student_shape: Sequence[int],
                 kernel_size: PosInt = 1):
        super().__init__()
        try:
            t, s = tuple(int(v) for v in teacher_shape), tuple(int(v) for v in student_shape)
        except (TypeError, ValueError):
            raise FlowKDError(
                f"fitnet needs per-sample shapes, got teacher {teacher_shape!r}, student {student_shape!r}"
            ) from None
        if len(t) not in (1, 3) or len(s) not in (1, 3):
            raise FlowKDError(f"fitnet needs (C, H, W) maps or (D,) vectors per sample: teacher {t}, student {s}")
        if len(t) != len(s):
            raise FlowKDError(f"fitnet cannot regress between a map and a vector: teacher {t}, student {s}")
        if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
            raise FlowKDError(f"fitnet kernel_size must be an odd positive int, got {kernel_size!r}")
        self.teacher_shape, self.student_shape, self.maps = t, s, len(t) == 3
        if self.maps:
            self.regressor = nn.Conv2d(s[0], t[0], kernel_size, padding=kernel_size // 2, bias=False)
        else:
            self.regressor = nn.Linear(s[0], t[0], bias=False)

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        ndim = 4 if self.maps else 2
        if teacher.ndim != ndim or student.ndim != ndim or teacher.shape[1] != self.teacher_shape[0] \
                or student.shape[1] != self.student_shape[0]:
            raise FlowKDError(
                f"fitnet built for teacher {self.teacher_shape} and student {self.student_shape} per sample, "
                f"got teacher {tuple(teacher.shape)} and student {tuple(student.shape)}"
            )
        _same_batch("fitnet", teacher, student)
        w = self.regressor.weight.float()
        with torch.autocast(device_type=student.device.type, enabled=False):
            t, s = teacher.float(), student.float()
            if t.is_inference():  # a frozen teacher's features (inference_mode): MSE keeps its target for backward
                t = t.clone()
            if not self.maps:
                return F.mse_loss(F.linear(s, w), t)
            r = F.conv2d(s, w, padding=self.regressor.padding)
            size = _common_size(t, r)
            return F.mse_loss(_pool_to(r, size), _pool_to(t, size))


class AttentionTransfer(nn.Module):
    """Zagoruyko & Komodakis attention transfer between (N, C, H, W) maps; channel counts may differ.

    ``a(x)`` = channel mean of ``|x|^p``, flattened and L2-normalised per sample; a larger attention
    map is adaptive-average-pooled to the smaller spatial size first. Loss: ``(a_s - a_t)^2`` averaged
    over samples and positions.
    """

    def __init__(self, p: PosFloat = 2.0):
        super().__init__()
        check_options(AttentionTransfer, {"p": p}, "at")
        self.p = p

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        if teacher.ndim != 4 or student.ndim != 4:
            raise FlowKDError(
                f"at needs 4-D (N, C, H, W) maps: teacher {tuple(teacher.shape)}, student {tuple(student.shape)}"
            )
        _same_batch("at", teacher, student)
        with torch.autocast(device_type=student.device.type, enabled=False):
            a_t = teacher.float().abs().pow(self.p).mean(dim=1, keepdim=True)
            a_s = student.float().abs().pow(self.p).mean(dim=1, keepdim=True)
            size = _common_size(a_t, a_s)
            a_t = F.normalize(_pool_to(a_t, size).flatten(1), dim=1, eps=1e-12)
            a_s = F.normalize(_pool_to(a_s, size).flatten(1), dim=1, eps=1e-12)
            return (a_s - a_t).pow(2).mean()

    @property
    def teacher_form_name(self) -> str:
        return f"at-p{self.p:g}"

    def teacher_form(self, teacher: torch.Tensor) -> torch.Tensor:
        """The smallest input giving the same loss (what a bank of teacher views stores): the channel mean of
        ``|x|^p`` as a one-channel map, to the power ``1/p`` — ``forward`` raises it to ``p`` again."""
        with torch.autocast(device_type=teacher.device.type, enabled=False):
            return teacher.float().abs().pow(self.p).mean(dim=1, keepdim=True).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SimilarityPreserving(nn.Module):
    """Tung & Mori similarity-preserving KD: match the batch's row-normalised Gram matrices.

    Features are flattened to (N, D) (Dt and Ds may differ); ``G = F F^T`` with each row
    L2-normalised; loss ``||G_t - G_s||_F^2 / N^2``.
    """

    relational = True  # compares the samples of a batch: needs batches of two or more

    @staticmethod
    def _gram(x: torch.Tensor) -> torch.Tensor:
        f = x.float().reshape(x.shape[0], -1)
        return F.normalize(f @ f.t(), dim=1, eps=1e-12)

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        _same_batch("sp", teacher, student)
        n = student.shape[0]
        with torch.autocast(device_type=student.device.type, enabled=False):
            return (self._gram(teacher) - self._gram(student)).pow(2).sum() / (n * n)


# ---- registry: factory(teacher_shape, student_shape, **options) -> nn.Module --------------------
PAIR_LOSSES: Registry = Registry("pair loss")


def _factory(name: str, cls, build):
    """Register ``build(teacher_shape, student_shape, **options)`` as ``name``; its options are ``cls``'s typed
    parameters (``PAIR_LOSSES.check_options`` checks names, types and ranges against them)."""
    def factory(teacher_shape, student_shape, **options) -> nn.Module:
        PAIR_LOSSES.check_options(name, options, "")
        return build(teacher_shape, student_shape, **options)

    factory.__name__ = f"make_{name}"
    factory.typed = cls
    PAIR_LOSSES.register(name)(factory)
    return factory


_factory("kd", HintonKD, lambda t, s, **o: HintonKD(**o))
_factory("fitnet", FitNetHint, lambda t, s, **o: FitNetHint(t, s, **o))
_factory("at", AttentionTransfer, lambda t, s, **o: AttentionTransfer(**o))
_factory("sp", SimilarityPreserving, lambda t, s, **o: SimilarityPreserving())
_factory("pkt", PKTLoss, lambda t, s, **o: PKTLoss(**o))


def make_pair_loss(name: str, teacher_shape=None, student_shape=None, **options) -> nn.Module:
    """The pair loss registered as ``name``, built for per-sample shapes (used by "fitnet" only)."""
    return PAIR_LOSSES.get(name)(teacher_shape, student_shape, **options)
