"""Similarity kernels over a batch of feature vectors, and their row-normalised probabilities.

Every function takes a feature matrix ``x`` of shape (N, D) and returns an (N, N) matrix.
Formulas follow docs/method.md §1; all arithmetic is done in float32 whatever the input dtype.
"""

from __future__ import annotations

import torch

from ..registry import Registry

__all__ = ["KERNELS", "cosine", "student_t", "rbf", "adaptive_rbf", "conditional", "EPS"]

EPS = 1e-6
KERNELS: Registry = Registry("kernel")


def _sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances through one matrix product; centring the batch first (distances do not
    change) limits fp32 cancellation, and the diagonal is exactly zero."""
    x = x - x.mean(0, keepdim=True).detach()
    sq = (x * x).sum(1, keepdim=True)
    d2 = (sq + sq.T - 2.0 * (x @ x.T)).clamp_min(0.0)
    return d2 * (1.0 - torch.eye(len(x), device=x.device, dtype=x.dtype))


@KERNELS.register("cosine")
def cosine(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(cos(a, b) + 1) / 2 with rows L2-normalised as x / (||x|| + eps); a zero row stays zero."""
    x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)
    return (x @ x.T + 1.0) / 2.0


@KERNELS.register("student_t")
def student_t(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """1 / (1 + ||a - b||), the distance taken as sqrt(max(d^2, 0) + eps)."""
    return 1.0 / (1.0 + torch.sqrt(_sq_dists(x) + eps))


@KERNELS.register("rbf")
def rbf(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """exp(-||a - b||^2 / (2 sigma^2)) with a fixed bandwidth."""
    return torch.exp(-_sq_dists(x) / (2.0 * sigma * sigma))


@KERNELS.register("adaptive_rbf")
def adaptive_rbf(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """RBF whose 2 sigma^2 is the batch's mean off-diagonal squared distance (held constant for gradients)."""
    d2 = _sq_dists(x)
    n = x.shape[0]
    scale = d2.detach().sum() / max(n * n - n, 1)
    return torch.exp(-d2 / (scale + eps))


def conditional(k: torch.Tensor) -> torch.Tensor:
    """Row-normalise a kernel matrix (or a stack of them) into conditional probabilities p(j | i); the
    diagonal stays in."""
    return k / k.sum(-1, keepdim=True)
