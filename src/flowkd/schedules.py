"""Weight schedules for the layer pairs: pure functions of the epoch.

A schedule is any callable ``(epoch, n_pairs) -> list[float]`` with one weight per pair, shallow to deep;
the last pair is the final representation. A schedule that follows the training instead (the adaptive
critical period) names the per-epoch record value it follows (``follows``) and takes their history before each
epoch (``follow``), from ``InformationFlowLoss.begin_epoch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Protocol

from .checks import NonNegFloat, PosInt, Range, check_fields
from .registry import Registry

__all__ = ["Schedule", "CriticalPeriod", "Constant", "AdaptiveCriticalPeriod", "SCHEDULES"]

SCHEDULES: Registry = Registry("schedule")


class Schedule(Protocol):
    def __call__(self, epoch: int, n_pairs: int) -> list[float]: ...


@SCHEDULES.register("critical_period")
@dataclass(frozen=True)
class CriticalPeriod:
    """The paper's schedule: intermediate pairs weigh ``init * decay**epoch``, the last pair ``final``.

    With init=100 and decay=0.7 the intermediate weights go 100, 70, 49, ... below 2 after 11 epochs:
    the critical period in which the student forms its connections, then fitting and compression.
    """

    init: NonNegFloat = 100.0
    decay: Annotated[float, Range("[0, 1]")] = 0.7
    final: NonNegFloat = 1.0

    def __post_init__(self):
        check_fields(self)

    def __call__(self, epoch: int, n_pairs: int) -> list[float]:
        return [self.init * self.decay**epoch] * (n_pairs - 1) + [self.final]


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class Constant:
    """The same weight for every intermediate pair at every epoch (``final`` for the last pair)."""

    weight: NonNegFloat = 1.0
    final: NonNegFloat = 1.0

    def __post_init__(self):
        check_fields(self)

    def __call__(self, epoch: int, n_pairs: int) -> list[float]:
        return [self.weight] * (n_pairs - 1) + [self.final]


@SCHEDULES.register("adaptive")
@dataclass
class AdaptiveCriticalPeriod:
    """The critical period ends when the student's layers stop gaining information, not after a fixed time.

    Intermediate pairs keep ``init`` while the mean quadratic MI of the student's intermediate taps with the
    labels (measured on a probe set after every epoch: the ``flow_mi`` of the stage's records, which the
    flow loss hands to ``follow`` before each epoch; or passed one by one to ``observe``) still grows by more than
    ``tol`` (relative) per epoch; once it has grown less than that for ``patience`` epochs in a row, the
    critical period is over and the weights decay by ``decay`` per epoch from there. The last pair keeps
    ``final``. The weights of epoch e depend only on what was observed after epochs 0..e-1.
    """

    init: NonNegFloat = 100.0
    decay: Annotated[float, Range("[0, 1]")] = 0.7
    tol: NonNegFloat = 0.01
    patience: PosInt = 2
    final: NonNegFloat = 1.0
    history: list = field(default_factory=list, init=False, repr=False)
    follows = "flow_mi"  # the record value it follows (see InformationFlowLoss.begin_epoch)

    def __post_init__(self):
        check_fields(self)

    def observe(self, value: float) -> None:
        self.history.append(float(value))

    def follow(self, values) -> None:
        """What was observed after each epoch so far, all at once."""
        self.history = [float(v) for v in values]

    def end(self, upto: int | None = None) -> int | None:
        """The first epoch after the critical period, judged from the first ``upto`` observations."""
        h = self.history[:upto]
        flat = 0
        for e in range(1, len(h)):
            grew = (h[e] - h[e - 1]) / max(abs(h[e - 1]), 1e-12)
            flat = flat + 1 if grew < self.tol else 0
            if flat >= self.patience:
                return e + 1
        return None

    def __call__(self, epoch: int, n_pairs: int) -> list[float]:
        end = self.end(epoch)
        w = self.init if end is None or epoch < end else self.init * self.decay ** (epoch - end + 1)
        return [w] * (n_pairs - 1) + [self.final]
