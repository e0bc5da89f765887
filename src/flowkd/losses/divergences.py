"""Divergences between two (N, N) conditional-probability matrices, averaged over all N^2 entries."""

from __future__ import annotations

import torch

from ..registry import Registry

__all__ = ["DIVERGENCES", "jeffreys", "kl"]

DIVERGENCES: Registry = Registry("divergence")


@DIVERGENCES.register("jeffreys")
def jeffreys(p: torch.Tensor, q: torch.Tensor, eps: float | None = 1e-6, dim=None) -> torch.Tensor:
    """mean((P - Q) * (log P - log Q)); ``eps`` is added inside each log (None: plain logs, as the paper's code).
    ``dim``: average over those dimensions only (a stack of matrices gives one value per matrix)."""
    if eps is None:
        d = (p - q) * (torch.log(p) - torch.log(q))
    else:
        d = (p - q) * (torch.log(p + eps) - torch.log(q + eps))
    return d.mean() if dim is None else d.mean(dim)


@DIVERGENCES.register("kl")
def kl(p: torch.Tensor, q: torch.Tensor, eps: float | None = 1e-6, dim=None) -> torch.Tensor:
    """mean(P * log(P / Q)), the teacher P first (classic PKT); ``dim`` as in :func:`jeffreys`."""
    if eps is None:
        d = p * (torch.log(p) - torch.log(q))
    else:
        d = p * (torch.log(p + eps) - torch.log(q + eps))
    return d.mean() if dim is None else d.mean(dim)
