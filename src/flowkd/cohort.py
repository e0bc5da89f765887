"""Many students in one pass: consecutive stages that read the same data train in lockstep.

A cohort's stages see the same batches (same loader: order and augmentation draws come from the run's data
seed), so each batch is gathered and augmented once, and each frozen teacher network computes its taps once
per batch for every student that reads it (the union of their taps). Each student keeps its own step,
loss, schedule, optimiser, learning-rate plan, records and checkpoints (``flowkd.loop.Trainer``); on a CPU
the weights and metrics are bit-identical to training the same stages one after another.

A student whose training fails (a non-finite loss) stops with its own error; the others go on.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from .errors import FlowKDError
from .loop import Trainer, progress
from .stages import Stage
from .steps import DistillStep
from .taps import FrozenTaps

__all__ = ["cohorts", "train_cohort", "SharedTeacher"]


def cohorts(stages: Sequence[Stage]) -> list[list[Stage]]:
    """Consecutive stages grouped into cohorts: a stage joins the current one when it reads the same batches
    (``Stage.data_key``), trains a model no member trains, and neither learns from a model a member trains nor
    teaches one (a teacher must be frozen while the cohort trains)."""
    groups: list[list[Stage]] = []
    for st in stages:
        g = groups[-1] if groups else None
        if g is not None and st.data_key == g[0].data_key and _independent(st, g):
            g.append(st)
        else:
            groups.append([st])
    return groups


def _independent(st: Stage, group: list[Stage]) -> bool:
    trained = {m.model_name for m in group}
    teachers = {m.teacher_name for m in group if m.teacher_name}
    return st.model_name not in trained and st.teacher_name not in trained and st.model_name not in teachers


class SharedTeacher:
    """A frozen network's taps for every student of a cohort that reads it: computed once per batch (the union
    of the students' taps), then handed to each student's step."""

    def __init__(self, model, specs, inference_mode: bool = True):
        self.frozen = FrozenTaps(model, specs, inference_mode)
        self._x, self._feats = None, None

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x is not self._x:  # the cohort hands every student the same batch tensor
            self._x, self._feats = x, self.frozen(x)
        return self._feats

    def remove(self) -> None:
        self.frozen.remove()
        self._x = self._feats = None


def share_teachers(group: list[Stage]) -> list[SharedTeacher]:
    """Point every distillation step of ``group`` that reads the same teacher network at one SharedTeacher."""
    by_teacher: dict[int, list[Stage]] = {}
    for st in group:
        if isinstance(st.step, DistillStep) and isinstance(st.step.teacher, FrozenTaps):
            by_teacher.setdefault(id(st.step.teacher.model), []).append(st)
    shared = []
    for members in by_teacher.values():
        if len(members) < 2:
            continue
        first = members[0].step.teacher
        specs = list(dict.fromkeys(t for st in members for t in st.flow.teacher_taps))
        teacher = SharedTeacher(first.model, specs, first.inference_mode)
        for st in members:
            st.step.teacher.remove()
            st.step.teacher = teacher
        shared.append(teacher)
    return shared


def train_cohort(loader, trainers: Sequence[Trainer], *, show_progress: bool = True,
                 on_failure: Callable[[Trainer, FlowKDError], None] | None = None) -> dict[str, FlowKDError]:
    """Train every trainer over the same batches of ``loader``, epoch by epoch (a trainer resumed further on
    skips the epochs it has done; one with fewer epochs stops earlier). Returns the errors of the trainers
    that failed, by name; the others run to their end."""
    failed: dict[str, FlowKDError] = {}
    first = min(t.first for t in trainers)
    total = max(t.total for t in trainers)
    names = ", ".join(t.name for t in trainers)
    for epoch in range(first, total):
        active = [t for t in trainers if t.first <= epoch < t.total and t.name not in failed]
        if not active:
            continue
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for t in active:
            t.begin(epoch)
        t0 = time.perf_counter()
        label = active[0].name if len(trainers) == 1 else f"cohort ({names})"
        for batch in progress(loader, f"{label} {epoch + 1}/{total}", total=len(loader), enabled=show_progress):
            for t in active:
                t.batch(batch)
        wall = time.perf_counter() - t0 if len(active) == 1 else None  # alone: the epoch's wall time
        for t in active:
            try:
                t.end(epoch, wall)
            except FlowKDError as e:
                failed[t.name] = e
                if on_failure is not None:
                    on_failure(t, e)
    return failed
