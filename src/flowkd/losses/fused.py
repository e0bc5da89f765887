"""The combined-kernel PKT of L layer pairs at once, as one autograd function with a hand-derived backward.

A small student's training step on a GPU is bound by the number of kernels it launches, and PKT is many small
N x N operations per pair, forward and backward. Here every step after the Gram products runs once for the
stack of all pairs (teachers and students together in the forward), and the backward is written out instead
of being recorded op by op: about 90 kernels for 4 pairs, forward + backward, where autograd over the same
stacked forward needs about 200.

Per feature matrix X (N x D), in float32 (float64 stays float64), ``e`` the kernels' epsilon:
  A = X X^T,  n = sqrt(diag A) + e,               cosine     Kc = (A / n n^T + 1) / 2
  C = X - mean(X) (mean held constant), G = C C^T,
  d2 = off-diagonal part of max(G_ii + G_jj - 2 G_ij, 0),  Student-t  Kt = 1 / (1 + sqrt(d2 + e))
  Q = K / rowsum(K);  value = mean over the N^2 entries of the divergence of the teacher's P and Q.
Backward, g = d loss / d value, ``l`` the divergence's log epsilon:
  dQ = -g/N^2 ((log(P+l) - log(Q+l)) + (P - Q) / (Q + l))   (Jeffreys)    dQ = -g/N^2 P / (Q + l)   (KL)
  dK = (dQ - rowsum(dQ * Q)) / rowsum(K)
  cosine:    S = dKc + dKc^T;  dX += (S / (2 n n^T) - diag(rowsum(S * (2 Kc - 1)) / (2 n ||x||))) X
  Student-t: dd2 = off-diagonal part of -dKt Kt^2 / (2 sqrt(d2 + e)),  E = dd2 + dd2^T;
             dX += (2 diag(rowsum E) - 2 E) C
The clamp at zero is a rounding guard (d2 is a squared distance), so its gradient is taken as passing.
One product per student: T = 2 diag(rowsum E) - 2 E has rows summing to zero, so T C = T X and
dX = (M + T) X, M the cosine's matrix: half the backward's multiply-adds. (Rounding: T X sums terms of size
|x| where T C sums terms of size |x - mean|, a factor |x| / |x - mean| on one fp32 rounding, where the
forward's distances would lose that factor squared; the other way round, (M + T) C + (M 1) mean^T, cancels
M's 1 / eps entries of a zero row, so that one is not used.)
The products are the arithmetic (4 pairs of the student stage: 2 N^2 D per matrix forward, N^2 D per student
backward, about 290 M multiply-adds); ``benchmarks/bench_pkt.py`` measures the rest.
``tests/test_pkt.py`` checks values and gradients against loop references, the autograd of the separate
kernels, and finite differences.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import FlowKDError
from .kernels import EPS

__all__ = ["pkt_stack", "pkt_target"]


def _kernels(xs: list[torch.Tensor]):
    """The cosine and Student-t kernels of M matrices of one batch, stacked (2, M, N, N), and the pieces the
    backward needs: the cosines (A / n n^T), n n^T, ||x||, sqrt(d2 + e)."""
    m, n = len(xs), xs[0].shape[0]
    gram = xs[0].new_empty(2, m, n, n)  # raw and centred Gram matrices, written in place by the products
    for i, x in enumerate(xs):
        torch.mm(x, x.T, out=gram[0, i])
        c = x - x.mean(0, keepdim=True)
        torch.mm(c, c.T, out=gram[1, i])
    raw, g = gram[0], gram[1]
    norm = torch.diagonal(raw, dim1=1, dim2=2).sqrt()           # (M, N)
    ne = norm + EPS
    outer = ne[:, :, None] * ne[:, None, :]
    k = raw.new_empty(2, m, n, n)
    cos = raw.div_(outer)                                       # the cosines, in the raw Gram's memory
    torch.add(cos, 1.0, out=k[0]).mul_(0.5)
    sq = torch.diagonal(g, dim1=1, dim2=2)
    d2 = (sq[:, :, None] + sq[:, None, :]).add_(g, alpha=-2.0).clamp_(min=0.0)
    d2.diagonal(dim1=1, dim2=2).zero_()
    dist = d2.add_(EPS).sqrt_()
    torch.add(dist, 1.0, out=k[1]).reciprocal_()
    return k, cos, outer, norm, dist


class _PKTStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kl: bool, log_eps: float | None, n_pairs: int, target, *mats: torch.Tensor) -> torch.Tensor:
        # mats: the L teacher matrices, then the L student matrices, flat, of one floating dtype; or, when
        # ``target`` holds the teachers' (P, log(P + l)) (see pkt_target), the L student matrices only
        L = n_pairs
        k, cos, outer, norm, dist = _kernels(list(mats))
        r = k.sum(-1, keepdim=True)
        q = k / r
        le = log_eps or 0.0
        qe = q + le if le else q
        logs = qe.log()
        if target is None:
            p, lp, s = q[:, :L], logs[:, :L], slice(L, None)
        else:
            (p, lp), s = target, slice(None)
        qs, lq = q[:, s], logs[:, s]
        ld = lp - lq
        d = (p - qs) * ld if not kl else p * ld
        value = d.mean((-1, -2))                                   # (2, L): cosine values, Student-t values
        ctx.kl, ctx.n, ctx.first = kl, k.shape[-1], 4 + (L if target is None else 0)
        ctx.save_for_backward(*mats[s], k[:, s], r[:, s], qs, qe[:, s], p, ld, cos[s], outer[s], norm[s], dist[s])
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        saved = ctx.saved_tensors
        L = len(saved) - 10
        xs = saved[:L]
        k, r, q, qe, p, ld, cos, outer, norm, dist = saved[L:]
        with torch.autocast(device_type=grad.device.type, enabled=False):
            scale = grad.to(q.dtype)[:, :, None, None] * (-1.0 / ctx.n**2)
            dq = (p / qe) if ctx.kl else ((p - q).div_(qe).add_(ld))
            dq.mul_(scale)
            dk = dq.sub_((dq * q).sum(-1, keepdim=True)).div_(r)
            # cosine
            sc = dk[0] + dk[0].transpose(1, 2)
            dn = (sc * cos).sum(-1).div_(norm.clamp_min(torch.finfo(norm.dtype).tiny) * (norm + EPS)).mul_(-0.5)
            m1 = sc.div_(outer).mul_(0.5)
            m1.diagonal(dim1=1, dim2=2).add_(dn)
            # Student-t: dKt / dd2 = -Kt^2 / (2 sqrt(d2 + e))
            dd2 = dk[1].mul_(k[1]).mul_(k[1]).div_(dist).mul_(-0.5)
            dd2.diagonal(dim1=1, dim2=2).zero_()
            e2 = (dd2 + dd2.transpose(1, 2)).mul_(-2.0)
            e2.diagonal(dim1=1, dim2=2).sub_(e2.sum(-1))
            w = m1.add_(e2)                                             # M + T
            grads = [torch.mm(w[i], xs[i]) if ctx.needs_input_grad[ctx.first + i] else None for i in range(L)]
        return (None, None, None, None, *([None] * (ctx.first - 4)), *grads)


def pkt_target(teachers: list[torch.Tensor], log_eps: float | None = 1e-6,
               groups: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The teachers' side of :func:`pkt_stack`: their conditional probabilities P (2, L, N, N: cosine, then
    Student-t) and log(P + l), computed without gradient. Students of one cohort that read the same teacher
    taps share it (``pkt_stack(..., target=)``); the values are those pkt_stack computes for itself.
    ``groups``: the teachers come in consecutive groups of these sizes, one group per pair, and a pair's P is
    the mean of its group's (several teachers' similarity distributions averaged; still a distribution per row)."""
    with torch.no_grad():
        k = _kernels([t.detach() for t in teachers])[0]
        p = k / k.sum(-1, keepdim=True)
        if groups is not None:
            if sum(groups) != len(teachers) or min(groups, default=0) < 1:
                raise FlowKDError(f"groups {list(groups)} do not split {len(teachers)} teacher matrices")
            p = torch.stack([g.mean(1) for g in p.split(list(groups), dim=1)], dim=1)
        le = log_eps or 0.0
        return p, (p + le if le else p).log()


def pkt_stack(teachers: list[torch.Tensor] | None, students: list[torch.Tensor], kl: bool = False,
              log_eps: float | None = 1e-6, target: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(2, L) PKT values of L (teacher, student) pairs of flat matrices of one dtype: row 0 the cosine
    kernel's, row 1 the Student-t kernel's; Jeffreys divergence, or KL (teacher first) with ``kl``.
    Gradients flow to the students only. ``target``: the teachers' side already computed
    (:func:`pkt_target` of the same teachers and ``log_eps``), in place of ``teachers``."""
    if target is not None:
        return _PKTStack.apply(kl, log_eps, len(students), target, *students)
    return _PKTStack.apply(kl, log_eps, len(students), None, *[t.detach() for t in teachers], *students)
