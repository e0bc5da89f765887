"""Weight schedules for the layer pairs: pure functions of the epoch.

A schedule is any callable ``(epoch, n_pairs) -> list[float]`` with one weight per pair, shallow to deep;
the last pair is the final representation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .registry import Registry

__all__ = ["Schedule", "CriticalPeriod", "Constant", "SCHEDULES"]

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

    init: float = 100.0
    decay: float = 0.7
    final: float = 1.0

    def __call__(self, epoch: int, n_pairs: int) -> list[float]:
        return [self.init * self.decay**epoch] * (n_pairs - 1) + [self.final]


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class Constant:
    """The same weight for every intermediate pair at every epoch (``final`` for the last pair)."""

    weight: float = 1.0
    final: float = 1.0

    def __call__(self, epoch: int, n_pairs: int) -> list[float]:
        return [self.weight] * (n_pairs - 1) + [self.final]
