"""Similarity kernels over a batch of feature vectors, and their row-normalised probabilities.

Every function takes a feature matrix ``x`` of shape (N, D) and returns an (N, N) matrix, computed in
``x``'s dtype (``pkt_loss`` decides the dtype: see its docstring). Formulas follow docs/method.md §1.

``rbf`` and ``adaptive_rbf`` are the kernels of those names in the authors' reference PKT code
(passalis/pkth, ``nn/pkt_transfer.py``, function ``prob_loss``; the same in passalis/probabilistic_kt): there
they are exp(-d / sigma) of the Euclidean distance d = sqrt(max(d^2, 0) + 1e-6) (not of its square), with
sigma a parameter defaulting to 1 for ``rbf`` and, for ``adaptive_rbf``, sigma = the mean of that distance
matrix over all N^2 entries (diagonal included, where d = sqrt(1e-6)), detached from the graph. The Gaussian
exp(-d^2 / (2 sigma^2)) lives under its own names, ``gaussian`` and ``adaptive_gaussian``.
"""

from __future__ import annotations

import torch

from ..registry import Registry

__all__ = ["KERNELS", "cosine", "student_t", "rbf", "adaptive_rbf", "gaussian", "adaptive_gaussian", "conditional",
           "sq_dists", "EPS"]

EPS = 1e-6
KERNELS: Registry = Registry("kernel")


def sq_dists(x: torch.Tensor) -> torch.Tensor:
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
    return 1.0 / (1.0 + torch.sqrt(sq_dists(x) + eps))


def _dists(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Pairwise Euclidean distances sqrt(max(d^2, 0) + eps), as the reference code takes them (the diagonal is
    sqrt(eps), and the gradient stays finite for duplicate rows)."""
    return torch.sqrt(sq_dists(x) + eps)


@KERNELS.register("rbf")
def rbf(x: torch.Tensor, sigma: float = 1.0, eps: float = EPS) -> torch.Tensor:
    """exp(-||a - b|| / sigma), the distance taken as sqrt(max(d^2, 0) + eps) and a fixed ``sigma`` (default 1):
    the reference code's ``rbf`` kernel (see the module docstring)."""
    return torch.exp(-_dists(x, eps) / sigma)


@KERNELS.register("adaptive_rbf")
def adaptive_rbf(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """exp(-||a - b|| / sigma) with sigma the mean of the batch's N x N distance matrix (diagonal included, as
    in the reference code), held constant for gradients: the reference code's ``adaptive_rbf``."""
    d = _dists(x, eps)
    return torch.exp(-d / d.detach().mean())


@KERNELS.register("gaussian")
def gaussian(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """exp(-||a - b||^2 / (2 sigma^2)) with a fixed bandwidth (what flowkd's ``rbf`` computed before it was made
    the reference's ``rbf``)."""
    return torch.exp(-sq_dists(x) / (2.0 * sigma * sigma))


@KERNELS.register("adaptive_gaussian")
def adaptive_gaussian(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Gaussian whose 2 sigma^2 is the batch's mean off-diagonal squared distance (held constant for gradients):
    exp(-||a - b||^2 / (mean d^2 + eps)) (what flowkd's ``adaptive_rbf`` computed before it was made the
    reference's)."""
    d2 = sq_dists(x)
    n = x.shape[0]
    scale = d2.detach().sum() / max(n * n - n, 1)
    return torch.exp(-d2 / (scale + eps))


def conditional(k: torch.Tensor) -> torch.Tensor:
    """Row-normalise a kernel matrix (or a stack of them) into conditional probabilities p(j | i); the
    diagonal stays in."""
    return k / k.sum(-1, keepdim=True)
