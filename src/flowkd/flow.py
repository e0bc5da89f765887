"""The information-flow loss: PKT at several (teacher tap, student tap) pairs, weighted by a schedule.

The per-pair loss is PKT by default; any module ``(teacher, student) -> scalar`` can take its place
(``pair_losses``), which is how the classic baselines (Hinton KD, FitNets, attention transfer,
similarity preserving) run through the same pairs, schedule and training loop.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .data.batch import Memo
from .errors import FlowKDError
from .losses.pkt import BATCHED_DIVERGENCES, PKTLoss, pairs_target, pkt_dtype, pkt_pairs
from .schedules import CriticalPeriod, Schedule
from .taps import parse_tap, teacher_keys

__all__ = ["InformationFlowLoss"]


class InformationFlowLoss(nn.Module):
    """Loss = sum_l w_l(epoch) * PKT(T[t_l], S[s_l]) over ``pairs`` ordered shallow -> deep.

    ``pairs`` are (teacher tap, student tap) spec strings (see ``flowkd.taps``); the last pair is the
    final representation. A teacher side ``"a+b"`` averages the similarity distributions of several teacher
    taps (PKT's target: the mean of theirs; e.g. two auxiliaries' ``"aux2/pool1+aux3/pool1"``). The taps are named
    only here: ``teacher_taps``/``student_taps`` give the specs to hook. ``forward`` returns named terms: ``loss`` (the weighted sum), and per pair the raw loss
    ``<loss>/<t>~<s>`` (``pkt/...`` by default) and its weight ``w/<t>~<s>``.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        schedule: Schedule | None = None,
        kernel: str = "combined",
        divergence: str = "jeffreys",
        log_eps: float | None = 1e-6,
        *,
        pair_losses: Sequence[nn.Module] | None = None,
        term: str | Sequence[str] = "pkt",
    ):
        super().__init__()
        pairs = [tuple(p) for p in pairs]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise FlowKDError("information flow needs a non-empty list of (teacher tap, student tap) pairs")
        # each pair's teacher keys: "a+b" averages the PKT similarity distributions of several teacher taps;
        # a key "model/tap" is a tap of another teacher (flowkd.teachers.JointTeacher)
        self.parts = [tuple(teacher_keys(t)) for t, _ in pairs]
        for keys, (_, s) in zip(self.parts, pairs):
            for k in keys:
                parse_tap(k.rsplit("/", 1)[-1])
            parse_tap(s)
        self.pairs: list[tuple[str, str]] = pairs
        self.schedule = schedule if schedule is not None else CriticalPeriod()
        if pair_losses is None:
            pair_losses = [PKTLoss(kernel, divergence, log_eps)] * len(pairs)
        if len(pair_losses) != len(pairs):
            raise FlowKDError(f"{len(pair_losses)} pair losses for {len(pairs)} layer pairs")
        self.pair_losses = nn.ModuleList(pair_losses)
        self.terms = [term] * len(pairs) if isinstance(term, str) else list(term)  # each pair's loss, by name
        if len(self.terms) != len(pairs):
            raise FlowKDError(f"{len(self.terms)} loss names for {len(pairs)} layer pairs")
        self.names = [f"{t}~{s}" for t, s in pairs]
        # the pairs' weights of the current epoch: device memory written in place by begin_epoch before each
        # epoch, so a captured step reads each epoch's weights without re-capture
        self.register_buffer("weight_buffer", torch.tensor(self.weights(0), dtype=torch.float32), persistent=False)
        # the default (one combined-kernel PKT for every pair): all pairs computed together, see pkt_pairs
        first = self.pair_losses[0]
        self.batched = (isinstance(first, PKTLoss) and first.kernel == "combined" and first.divergence in BATCHED_DIVERGENCES
                        and all(type(l) is PKTLoss and (l.kernel, l.divergence, l.log_eps) == (first.kernel, first.divergence, first.log_eps)
                                for l in self.pair_losses))
        self.averaged = any(len(k) > 1 for k in self.parts)
        if self.averaged and not self.batched:
            raise FlowKDError("a pair averaging several teachers ('a/tap+b/tap') needs every pair's loss to be PKT "
                              "with the combined kernel and the jeffreys or kl divergence")

    @property
    def teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(k for keys in self.parts for k in keys))

    @property
    def student_taps(self) -> list[str]:
        return list(dict.fromkeys(s for _, s in self.pairs))

    @property
    def follows(self) -> str:
        """The per-epoch record value the schedule follows (``"flow_mi"`` for the adaptive critical period), or
        "" for a schedule that is a pure function of the epoch."""
        return getattr(self.schedule, "follows", "")

    def begin_epoch(self, epoch: int, records: Sequence[dict] = ()) -> None:
        """Before ``epoch``: a schedule that follows the training sees the values of the epochs before
        (``records``), then the pairs' weights of ``epoch`` go into ``weight_buffer`` in place."""
        if self.follows:
            self.schedule.follow([r[self.follows] for r in records if self.follows in r])
        self.weight_buffer.copy_(torch.as_tensor(self.weights(epoch), dtype=self.weight_buffer.dtype))

    def weights(self, epoch: int) -> list[float]:
        w = list(self.schedule(epoch, len(self.pairs)))
        if len(w) != len(self.pairs):
            raise FlowKDError(f"schedule gave {len(w)} weights for {len(self.pairs)} layer pairs")
        return w

    def forward(
        self, teacher: Mapping[str, torch.Tensor], student: Mapping[str, torch.Tensor], epoch: int | None = None,
        *, memo: Memo | None = None,
    ) -> dict[str, torch.Tensor]:
        """The weighted sum. The weights are ``weight_buffer`` (written by :meth:`begin_epoch`), or the schedule's weights at ``epoch`` when one is given (for use outside the loop).
        ``memo`` (the batch's, ``flowkd.teachers.Batch.memo``) keeps the teachers' side of the PKT stack: the
        students of a cohort are handed the same batch and, reading the same teacher tensors, compute it once
        (the same values as computing it here)."""
        if epoch is None:
            weights = self.weight_buffer
        else:
            weights = torch.tensor(self.weights(epoch), dtype=torch.float32, device=self.weight_buffer.device)
        if self.batched:
            first = self.pair_losses[0]
            groups = [[teacher[k] for k in keys] for keys in self.parts]
            ts, ss = [g[0] for g in groups], [student[s] for _, s in self.pairs]
            flat = [t for g in groups for t in g]
            sizes = [len(g) for g in groups] if self.averaged else None

            def compute():
                return flat, pairs_target(flat, ss, first.log_eps, sizes)

            target = None
            if memo is not None:  # keyed by the teacher tensors themselves, kept alive with the value
                key = ("pkt", tuple(tuple(map(id, g)) for g in groups), first.log_eps, pkt_dtype((*flat, *ss)))
                target = memo.get(key, compute)[1]
            elif self.averaged:
                target = compute()[1]
            stacked = pkt_pairs(ts, ss, first.divergence, first.log_eps, target=target)
        else:
            stacked = torch.stack([loss(teacher[t], student[s]).float()
                                   for (t, s), loss in zip(self.pairs, self.pair_losses)])
        weights = weights.to(stacked.device)
        terms: dict[str, torch.Tensor] = {}
        for i, (name, value) in enumerate(zip(self.names, stacked.unbind(0))):
            terms[f"{self.terms[i]}/{name}"] = value.detach()
            terms[f"w/{name}"] = weights[i]
        terms["loss"] = (stacked * weights).sum()  # one product with the weight vector, not a sum pair by pair
        return terms

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, schedule={self.schedule}"
