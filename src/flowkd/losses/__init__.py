"""Losses over plain feature tensors: kernels, divergences, PKT, and the classic KD baselines."""

from .baselines import (PAIR_LOSSES, AttentionTransfer, FitNetHint, HintonKD, SimilarityPreserving,
                        make_pair_loss)
from .divergences import DIVERGENCES, jeffreys, kl
from .kernels import KERNELS, adaptive_gaussian, adaptive_rbf, conditional, cosine, gaussian, rbf, student_t
from .pkt import KERNEL_CHOICES, PKTLoss, pkt_loss, pkt_pairs

__all__ = [
    "PAIR_LOSSES", "make_pair_loss", "HintonKD", "FitNetHint", "AttentionTransfer", "SimilarityPreserving",
    "DIVERGENCES", "KERNELS", "KERNEL_CHOICES", "PKTLoss", "pkt_loss", "pkt_pairs",
    "jeffreys", "kl", "cosine", "student_t", "rbf", "adaptive_rbf", "gaussian", "adaptive_gaussian", "conditional",
]
