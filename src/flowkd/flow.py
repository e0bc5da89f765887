"""The information-flow loss: PKT at several (teacher tap, student tap) pairs, weighted by a schedule.

The per-pair loss is PKT by default; any module ``(teacher, student) -> scalar`` can take its place
(``pair_losses``), which is how the classic baselines (Hinton KD, FitNets, attention transfer,
similarity preserving) run through the same pairs, schedule and training loop.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .capture import in_graph
from .errors import FlowKDError
from .losses.pkt import BATCHED_DIVERGENCES, PKTLoss, pkt_pairs
from .schedules import CriticalPeriod, Schedule
from .taps import parse_tap

__all__ = ["InformationFlowLoss"]


class InformationFlowLoss(nn.Module):
    """Loss = sum_l w_l(epoch) * PKT(T[t_l], S[s_l]) over ``pairs`` ordered shallow -> deep.

    ``pairs`` are (teacher tap, student tap) spec strings (see ``flowkd.taps``); the last pair is the
    final representation. The taps are named only here: ``teacher_taps``/``student_taps`` give the
    specs to hook. ``forward`` returns named terms: ``loss`` (the weighted sum), and per pair the raw
    ``pkt/<t>~<s>`` value and its weight ``w/<t>~<s>``.
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
        term: str = "pkt",
    ):
        super().__init__()
        pairs = [tuple(p) for p in pairs]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise FlowKDError("information flow needs a non-empty list of (teacher tap, student tap) pairs")
        for t, s in pairs:
            parse_tap(t), parse_tap(s)
        self.pairs: list[tuple[str, str]] = pairs
        self.schedule = schedule if schedule is not None else CriticalPeriod()
        if pair_losses is None:
            pair_losses = [PKTLoss(kernel, divergence, log_eps)] * len(pairs)
        if len(pair_losses) != len(pairs):
            raise FlowKDError(f"{len(pair_losses)} pair losses for {len(pairs)} layer pairs")
        self.pair_losses = nn.ModuleList(pair_losses)
        self.term = term
        self.names = [f"{t}~{s}" for t, s in pairs]
        # the default (one combined-kernel PKT for every pair): all pairs computed together, see pkt_pairs
        first = self.pair_losses[0]
        self.batched = (isinstance(first, PKTLoss) and first.kernel == "combined" and first.divergence in BATCHED_DIVERGENCES
                        and all(type(l) is PKTLoss and (l.kernel, l.divergence, l.log_eps) == (first.kernel, first.divergence, first.log_eps)
                                for l in self.pair_losses))

    @property
    def teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(t for t, _ in self.pairs))

    @property
    def student_taps(self) -> list[str]:
        return list(dict.fromkeys(s for _, s in self.pairs))

    def weights(self, epoch: int) -> list[float]:
        w = list(self.schedule(epoch, len(self.pairs)))
        if len(w) != len(self.pairs):
            raise FlowKDError(f"schedule gave {len(w)} weights for {len(self.pairs)} layer pairs")
        return w

    def forward(
        self, teacher: Mapping[str, torch.Tensor], student: Mapping[str, torch.Tensor], epoch: int = 0
    ) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        total = None
        weights = self.weights(epoch)
        if self.batched:
            first = self.pair_losses[0]
            stacked = pkt_pairs([teacher[t] for t, _ in self.pairs], [student[s] for _, s in self.pairs],
                                first.divergence, first.log_eps)
            values = stacked.unbind(0)
            if self._as_vector(weights):  # one product with the weight vector, not a sum pair by pair
                wvec = self._weight_vector(weights, stacked.device, in_graph(stacked))
                total = (stacked * wvec).sum()
        else:
            values = [loss(teacher[t], student[s]) for (t, s), loss in zip(self.pairs, self.pair_losses)]
        weighted = total is None
        for i, (name, w, value) in enumerate(zip(self.names, weights, values)):
            terms[f"{self.term}/{name}"] = value.detach()
            terms[f"w/{name}"] = torch.tensor(float(w)) if weighted else wvec[i]
            if weighted and w != 0.0:
                total = w * value if total is None else total + w * value
        if total is None:
            total = next(iter(student.values())).sum() * 0.0
        terms["loss"] = total
        return terms

    def _as_vector(self, weights: list[float]) -> bool:
        """Whether the weights multiply the batched PKT values as one device vector (every pair weighted; a
        zero weight leaves its pair out of the sum instead)."""
        return self.batched and all(w != 0.0 for w in weights)

    def _weight_vector(self, weights: list[float], device, keep: bool = False) -> torch.Tensor:
        """The weights as one float32 tensor on ``device``, kept in place from call to call: a step captured as
        a CUDA graph reads this memory at every replay, and ``prepare`` writes each epoch's weights into it.
        ``keep``: use it as it is (inside a capture or a replay, where the loop has prepared it)."""
        buf = getattr(self, "_weights_buf", None)
        if buf is None or buf.device != torch.device(device):
            buf = self._weights_buf = torch.tensor(weights, dtype=torch.float32, device=device)
            self._weights_now = list(weights)
        elif not keep and self._weights_now != list(weights):
            buf.copy_(torch.tensor(weights, dtype=torch.float32))
            self._weights_now = list(weights)
        return buf

    def prepare(self, epoch: int, device) -> tuple:
        """Before an epoch's steps (outside any capture): put the epoch's weights where a captured step reads
        them, and return what else a captured step has fixed in it (the loop captures again when that changes):
        nothing for the weight vector of the batched PKT; the weights themselves for per-pair losses."""
        w = self.weights(epoch)
        if self._as_vector(w):
            self._weight_vector(w, device)
            return ("weight vector", len(w))
        return tuple(w)

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, schedule={self.schedule}"
