"""Probabilistic knowledge transfer: match the batch's similarity distributions of two representations."""

from __future__ import annotations

from typing import Sequence

import torch

from ..checks import NonNegFloat, check_options
from ..errors import FlowKDError
from .divergences import DIVERGENCES
from .fused import pkt_stack, pkt_target
from .kernels import KERNELS, conditional

__all__ = ["pkt_loss", "pkt_pairs", "pairs_target", "pkt_dtype", "PKTLoss", "KERNEL_CHOICES"]

# "combined" is the paper's choice: the cosine and Student-t losses added.
KERNEL_CHOICES = {"combined": ("cosine", "student_t")} | {k: (k,) for k in KERNELS}


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def pkt_loss(
    teacher: torch.Tensor,
    student: torch.Tensor,
    kernel: str = "combined",
    divergence: str = "jeffreys",
    log_eps: float | None = 1e-6,
) -> torch.Tensor:
    """PKT loss between teacher (N x Dt) and student (N x Ds) features; Dt and Ds may differ.

    The teacher is a fixed target: no gradient reaches ``teacher`` whatever the kernel. Computed with autocast
    off, so bf16/fp16 features give the same, finite loss as their float32 values. The dtype: the
    ``combined`` kernel (through :func:`pkt_pairs`) computes in float32, or in float64 when either input is
    float64 (and returns that dtype); the single kernels (``cosine``, ``student_t``, ``rbf``, ...) always compute
    in float32 and return float32, float64 inputs included.
    ``log_eps=None`` drops the epsilon inside the divergence's logs (the reference code's habit).
    """
    if kernel not in KERNEL_CHOICES:
        raise FlowKDError(f"unknown kernel {kernel!r}; valid: {', '.join(sorted(KERNEL_CHOICES))}")
    div = DIVERGENCES.get(divergence)
    if teacher.shape[0] != student.shape[0]:
        raise FlowKDError(
            f"PKT needs the same batch on both sides: teacher has {teacher.shape[0]} rows, student {student.shape[0]}"
        )
    if kernel == "combined" and divergence in BATCHED_DIVERGENCES:  # both kernels together, see pkt_pairs
        return pkt_pairs([teacher], [student], divergence, log_eps)[0]
    with torch.autocast(device_type=student.device.type, enabled=False):
        t = _flat(teacher).detach().float()
        s = _flat(student).float()
        total = s.new_zeros(())
        for name in KERNEL_CHOICES[kernel]:
            k = KERNELS.get(name)
            total = total + div(conditional(k(t)), conditional(k(s)), eps=log_eps)
    return total


def pkt_dtype(xs: Sequence[torch.Tensor]) -> torch.dtype:
    """The dtype :func:`pkt_pairs` computes in for these matrices: float64 if any is, else float32."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def pairs_target(teachers: Sequence[torch.Tensor], students: Sequence[torch.Tensor],
                 log_eps: float | None = 1e-6, groups: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The teachers' side of :func:`pkt_pairs` (their similarity distributions and logs, in the dtype
    pkt_pairs computes in for these students): what ``pkt_pairs(..., target=)`` takes. ``groups``: the
    teachers come in consecutive groups of these sizes, one per student, each group's distributions averaged
    (:func:`flowkd.losses.fused.pkt_target`)."""
    with torch.autocast(device_type=teachers[0].device.type, enabled=False):
        dtype = pkt_dtype((*teachers, *students))
        return pkt_target([_flat(t).to(dtype) for t in teachers], log_eps, groups)


def pkt_pairs(
    teachers: Sequence[torch.Tensor],
    students: Sequence[torch.Tensor],
    divergence: str = "jeffreys",
    log_eps: float | None = 1e-6,
    target: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """PKT with the combined kernel for L (teacher, student) pairs of one batch at once: a vector of the L
    values, each equal to ``pkt_loss(teachers[l], students[l], "combined", ...)``.

    The information-flow loss of several layer pairs is many small N x N operations per pair; stacking the
    pairs runs each of them once, and the backward is written out (``flowkd.losses.fused``): kernel count is
    what bounds a small student's step on a GPU. ``divergence`` is ``jeffreys`` or ``kl``. Computed in float32
    (float64 inputs in float64) with autocast off; gradients reach the students only. ``target``: the
    teachers' side, already computed by :func:`pairs_target` for these teachers, students and ``log_eps``
    (students of a cohort reading the same teacher taps share it); the values are the same.
    """
    if len(teachers) != len(students) or not teachers:
        raise FlowKDError(f"pkt_pairs needs as many teacher as student matrices, got {len(teachers)} and {len(students)}")
    if divergence not in BATCHED_DIVERGENCES:
        raise FlowKDError(f"pkt_pairs supports the divergences {', '.join(BATCHED_DIVERGENCES)}, not {divergence!r}")
    n = {x.shape[0] for x in (*teachers, *students)}
    if len(n) != 1:
        raise FlowKDError(f"PKT needs the same batch on both sides and in every pair, got batch sizes {sorted(n)}")
    dtype = pkt_dtype((*teachers, *students))
    with torch.autocast(device_type=students[0].device.type, enabled=False):
        ts = [_flat(t).to(dtype) for t in teachers] if target is None else None
        values = pkt_stack(ts, [_flat(s).to(dtype) for s in students], kl=divergence == "kl", log_eps=log_eps,
                           target=target)   # (2, L): cosine, Student-t
        return values.sum(0)


BATCHED_DIVERGENCES = ("jeffreys", "kl")


class PKTLoss(torch.nn.Module):
    """``pkt_loss`` as a module with its options fixed."""

    relational = True  # compares the samples of a batch: needs batches of two or more

    def __init__(self, kernel: str = "combined", divergence: str = "jeffreys",
                 log_eps: NonNegFloat | None = 1e-6):
        super().__init__()
        check_options(PKTLoss, {"kernel": kernel, "divergence": divergence, "log_eps": log_eps}, "pkt")
        if kernel not in KERNEL_CHOICES:
            raise FlowKDError(f"unknown kernel {kernel!r}; valid: {', '.join(sorted(KERNEL_CHOICES))}")
        DIVERGENCES.get(divergence)
        self.kernel, self.divergence, self.log_eps = kernel, divergence, log_eps

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        return pkt_loss(teacher, student, self.kernel, self.divergence, self.log_eps)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, divergence={self.divergence}, log_eps={self.log_eps}"
