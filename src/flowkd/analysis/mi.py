"""Kernel estimates of how much a representation says about the labels (issue: information-flow analysis).

Quadratic mutual information in its Euclidean-distance form (Principe; Torkkola, JMLR 2003), with the
densities estimated by a kernel over the batch (the same similarity PKT uses). For N samples with
kernel matrix K (N x N), classes c with N_c samples and priors p_c = N_c / N:

    V_in  = 1/N^2 * sum_c sum_{i,j in c} K_ij                 (joint density with itself)
    V_all = 1/N^2 * sum_c p_c^2 * sum_{i,j} K_ij              (product of the marginals with itself)
    V_btw = 1/N^2 * sum_c p_c * sum_{i in c} sum_j K_ij       (joint with the product of marginals)
    QMI   = V_in + V_all - 2 V_btw  =  || p(x, c) - p(x) p(c) ||^2  >= 0

It is zero when the representation is independent of the labels and grows as samples of a class get
more similar to each other than to the rest. Default kernel: Gaussian with the bandwidth set to the mean
pairwise distance of the probe (so scales of different layers are comparable); ``cosine`` uses PKT's
(cos + 1) / 2 instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FlowKDError
from ..losses.kernels import sq_dists, cosine

__all__ = ["quadratic_mi"]


def _kernel(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cosine":
        return cosine(x)
    if kind == "gaussian":
        d2 = sq_dists(x)
        n = len(x)
        sigma2 = d2.sum() / max(n * n - n, 1)
        return torch.exp(-d2 / (2.0 * sigma2.clamp_min(1e-12)))
    raise FlowKDError(f"unknown MI kernel {kind!r}; valid: gaussian, cosine")


@torch.no_grad()
def quadratic_mi(features: torch.Tensor, labels: torch.Tensor, kernel: str = "gaussian") -> float:
    """QMI between features (N x D, or any (N, ...) tensor) and integer labels (N,)."""
    x = features.reshape(len(features), -1).double()
    y = torch.as_tensor(labels, device=x.device).long()
    if len(x) != len(y) or len(x) < 2:
        raise FlowKDError(f"quadratic_mi needs >= 2 samples with one label each, got {len(x)} and {len(y)}")
    k = _kernel(x, kernel)
    n = len(x)
    onehot = F.one_hot(y).double()  # (N, C)
    prior = onehot.mean(0)  # p_c
    v_in = (onehot.T @ k @ onehot).diagonal().sum() / n**2
    v_all = (prior**2).sum() * k.sum() / n**2
    v_btw = (prior * (onehot.T @ k.sum(1))).sum() / n**2
    return float(v_in + v_all - 2.0 * v_btw)
