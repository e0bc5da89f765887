"""Losses over plain feature tensors: kernels, divergences, PKT."""

from .divergences import DIVERGENCES, jeffreys, kl
from .kernels import KERNELS, adaptive_rbf, conditional, cosine, rbf, student_t
from .pkt import KERNEL_CHOICES, PKTLoss, pkt_loss

__all__ = [
    "DIVERGENCES", "KERNELS", "KERNEL_CHOICES", "PKTLoss", "pkt_loss",
    "jeffreys", "kl", "cosine", "student_t", "rbf", "adaptive_rbf", "conditional",
]
