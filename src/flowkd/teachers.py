"""Teachers: one protocol for everything a stage distils from, and the batch every step receives.

A teacher is called with the batch the student trains on and answers its taps::

    teacher(batch) -> {tap: features}

whatever it is underneath (:func:`as_teacher` wraps what a stage or a user gives):

- a network: its taps read frozen (:class:`NetworkTeacher`, through ``FrozenTaps``);
- an extractor, any function ``images -> {tap: features}`` (:class:`FunctionTeacher`; a bare tensor is
  accepted when exactly one tap is asked);
- precomputed features, a ``FeatureBank`` aligned with the loader's dataset, looked up by the batch's sample
  positions (:class:`FeatureTeacher`);
- a cohort's shared teacher: another teacher's taps computed once per batch for every student that reads it
  (:class:`SharedTeacher`, through the batch's :class:`Memo`);
- several teachers read by one stage, each for its own pairs (:class:`JointTeacher`).

No step or loss asks what kind of teacher it has. What is derived from the teacher's side of one batch and is
the same for several students (the teachers' side of PKT) goes in the batch's ``memo``, which the students of a
cohort share since they are handed the same :class:`Batch`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from .data.batch import Batch, Memo, as_batch
from .errors import FlowKDError
from .features import FeatureBank
from .taps import FrozenTaps

__all__ = ["Batch", "Memo", "Teacher", "as_teacher", "as_batch", "NetworkTeacher", "FunctionTeacher",
           "FeatureTeacher", "SharedTeacher", "JointTeacher"]


@runtime_checkable
class Teacher(Protocol):
    """What a distillation step reads the teacher's side from."""

    taps: tuple[str, ...]  # the taps it answers

    def __call__(self, batch: Batch) -> Mapping[str, torch.Tensor]: ...

    def close(self) -> None: ...


class NetworkTeacher:
    """A frozen network's taps on the batch's images (eval mode, no autograd: ``FrozenTaps``)."""

    def __init__(self, model: nn.Module, taps: Iterable[str], inference_mode: bool = True):
        self.taps = tuple(dict.fromkeys(taps))
        self.model, self.inference_mode = model, inference_mode
        self.frozen = FrozenTaps(model, self.taps, inference_mode)

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.frozen(batch.x)

    def close(self) -> None:
        self.frozen.remove()

    def __repr__(self) -> str:
        return f"NetworkTeacher({type(self.model).__name__}, taps={list(self.taps)})"


class FunctionTeacher:
    """An extractor: ``fn(images) -> {tap: features}`` (a bare tensor stands for the one tap asked)."""

    def __init__(self, fn: Callable, taps: Iterable[str]):
        self.fn, self.taps = fn, tuple(dict.fromkeys(taps))

    def __call__(self, batch: Batch) -> Mapping[str, torch.Tensor]:
        with torch.no_grad():
            out = self.fn(batch.x)
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        if isinstance(out, torch.Tensor):
            if len(self.taps) == 1:
                return {self.taps[0]: out}
            raise FlowKDError(f"teacher {name} returned a single tensor of shape {tuple(out.shape)}, but the loss "
                              f"reads {len(self.taps)} taps ({', '.join(self.taps)}): return a dict "
                              "{tap: features} with each of them")
        if not isinstance(out, Mapping):
            raise FlowKDError(f"teacher {name} returned a {type(out).__name__}; expected a dict {{tap: features}} "
                              f"with the taps {', '.join(self.taps)}")
        missing = [t for t in self.taps if t not in out]
        if missing:
            raise FlowKDError(f"teacher {name} returned the taps {', '.join(map(str, out)) or 'none'} but not "
                              f"{', '.join(missing)}, which the loss reads")
        return out

    def close(self) -> None:
        pass


class FeatureTeacher:
    """Precomputed per-sample features (a ``FeatureBank`` aligned with the loader's dataset), looked up by the
    batch's sample positions."""

    def __init__(self, bank: FeatureBank, taps: Iterable[str]):
        self.taps = tuple(dict.fromkeys(taps))
        bank.check_taps(self.taps)
        self.bank = bank

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.index is None:
            raise FlowKDError("a teacher given as precomputed features needs the batch's sample positions "
                              "(Batch.index; flowkd's Loader fills it)")
        return self.bank.lookup(batch.index, self.taps)

    def close(self) -> None:
        pass


class SharedTeacher:
    """A teacher read by several students of a cohort: its taps computed once per batch (in the batch's memo)
    and handed to each of them. ``teacher`` answers the union of the students' taps. ``autocast`` (e.g.
    ``torch.bfloat16``): the precision the students' steps run under (``fast.amp``); the pass runs under it
    wherever it is made, so a teacher computes alike in a cohort and in a stage of its own."""

    def __init__(self, teacher: Teacher, autocast: torch.dtype | None = None):
        self.teacher, self.taps, self.autocast = teacher, tuple(teacher.taps), autocast

    def __call__(self, batch: Batch) -> Mapping[str, torch.Tensor]:
        return batch.memo.get(("teacher", id(self)), lambda: self._pass(batch))

    def _pass(self, batch: Batch) -> Mapping[str, torch.Tensor]:
        if self.autocast is None:
            return self.teacher(batch)
        with torch.autocast(device_type=batch.x.device.type, dtype=self.autocast):
            return self.teacher(batch)

    def close(self) -> None:
        self.teacher.close()


class JointTeacher:
    """Several teachers read by one stage: each answers its own taps, renamed to the keys the stage's pairs use
    (``model/tap`` for every teacher but the stage's own). ``parts`` maps a teacher's name to (the teacher,
    {key: its tap})."""

    def __init__(self, parts: Mapping[str, tuple[Teacher, Mapping[str, str]]]):
        self.parts = dict(parts)
        self.taps = tuple(k for _, keys in self.parts.values() for k in keys)

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = {}
        for teacher, keys in self.parts.values():
            got = teacher(batch)
            out.update({k: got[t] for k, t in keys.items()})
        return out

    def close(self) -> None:
        for teacher, _ in self.parts.values():
            teacher.close()


def as_teacher(obj, taps: Iterable[str], inference_mode: bool = True) -> Teacher:
    """A :class:`Teacher` answering ``taps`` for whatever a stage or a user gives: a teacher (as is, once it is
    checked to answer them), a network, a ``FeatureBank``, or a function ``images -> {tap: features}``."""
    taps = tuple(dict.fromkeys(taps))
    if isinstance(obj, (NetworkTeacher, FunctionTeacher, FeatureTeacher, SharedTeacher, JointTeacher)) or (
            not isinstance(obj, (nn.Module, FeatureBank)) and isinstance(obj, Teacher)):
        missing = [t for t in taps if t not in obj.taps]
        if missing:
            raise FlowKDError(f"the teacher answers the taps {', '.join(obj.taps) or 'none'}, not "
                              f"{', '.join(missing)}")
        return obj
    if isinstance(obj, nn.Module):
        return NetworkTeacher(obj, taps, inference_mode)
    if isinstance(obj, FeatureBank):
        return FeatureTeacher(obj, taps)
    if callable(obj):
        return FunctionTeacher(obj, taps)
    raise FlowKDError(f"a teacher must be a network, precomputed features, a function images -> {{tap: features}} "
                      f"or a flowkd Teacher, got a {type(obj).__name__}")
