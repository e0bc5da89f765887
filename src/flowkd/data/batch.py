"""The batch: what the loader yields and every training step receives (images, labels, the samples'
positions, their views) with a per-batch :class:`Memo` of values derived from it.

Re-exported by ``flowkd.teachers`` (the protocol that reads it) and ``flowkd``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import FlowKDError

__all__ = ["Batch", "Memo", "as_batch"]


class Memo:
    """Values derived from one batch, computed once by the first caller that asks (others, on other threads
    too, wait for it and read the same objects)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._locks: dict = {}
        self._values: dict = {}

    def get(self, key, compute: Callable):
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                self._values[key] = compute()
            return self._values[key]


@dataclass(eq=False)
class Batch:
    """What the loader yields and every step receives."""

    x: torch.Tensor                       # the normalised (augmented) images the student sees
    y: torch.Tensor                       # labels
    index: torch.Tensor | None = None     # the samples' positions in the loader's dataset
    view: torch.Tensor | None = None      # per-sample view ids (uint8), when the loader serves views
    memo: Memo = field(default_factory=Memo)  # values derived from the teacher's side, shared by a cohort

    def tensors(self) -> dict[str, torch.Tensor]:
        """The batch's tensors by field name (those present)."""
        return {k: v for k, v in (("x", self.x), ("y", self.y), ("index", self.index), ("view", self.view))
                if v is not None}


def as_batch(b) -> Batch:
    """A :class:`Batch` as is; a tuple ``(x, y[, index])`` (a plain iterable of batches, e.g. a torch
    DataLoader's) as a Batch."""
    if isinstance(b, Batch):
        return b
    if isinstance(b, (tuple, list)) and len(b) in (2, 3):
        return Batch(*b)
    raise FlowKDError(f"a training batch must be a flowkd Batch or a tuple (images, labels[, index]), "
                      f"got {type(b).__name__}{f' of {len(b)} items' if isinstance(b, (tuple, list)) else ''}")
