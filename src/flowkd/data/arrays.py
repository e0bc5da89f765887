"""Datasets as whole uint8 tensors, and a loader that batches, augments and normalises on the device.

The dataset sits in memory (on the GPU when there is one) as uint8 (N, C, H, W); a batch is gathered,
augmented (random crop with zero padding, horizontal flip) and normalised where the data lives. Each
epoch's order and augmentation come from a generator seeded by (seed, epoch), so a run is reproducible
and any epoch can be replayed without replaying the ones before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import FlowKDError
from .batch import Batch

__all__ = ["ArrayDataset", "Loader", "epoch_generator"]


@dataclass
class ArrayDataset:
    """uint8 images (N, C, H, W), int64 labels (N,), class names, and per-channel mean/std in [0, 1] units."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: Sequence[float] = ()
    std: Sequence[float] = ()
    name: str = "data"
    meta: dict = field(default_factory=dict)
    rows: torch.Tensor | None = None  # each sample's row in the full split it came from (None: 0..N-1)
    source_len: int = 0               # that split's size (0: this dataset is the full split)

    def __post_init__(self):
        if isinstance(self.images, np.ndarray):
            self.images = torch.from_numpy(np.ascontiguousarray(self.images))
        if isinstance(self.labels, np.ndarray):
            self.labels = torch.from_numpy(np.ascontiguousarray(self.labels))
        self.labels = self.labels.long()
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise FlowKDError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) == 0:
            raise FlowKDError(f"{self.name}: the dataset is empty")
        if self.labels.shape != (len(self.images),):
            raise FlowKDError(f"{self.name}: {len(self.images)} images but labels of shape {tuple(self.labels.shape)}")
        n_cls = len(self.classes)
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if lo < 0 or hi >= n_cls:
            raise FlowKDError(f"{self.name}: label {hi if hi >= n_cls else lo} is out of range for {n_cls} classes")
        if not self.source_len:
            self.source_len = len(self.images)
        if self.rows is not None and self.rows.shape != (len(self.images),):
            raise FlowKDError(f"{self.name}: rows must hold one source row per image")
        c = self.images.shape[1]
        if not self.mean:
            x = self.images.float() / 255.0
            self.mean = tuple(x.mean((0, 2, 3)).tolist())
            self.std = tuple(x.std((0, 2, 3)).clamp_min(1e-3).tolist())
        if len(self.mean) != c or len(self.std) != c:
            raise FlowKDError(f"{self.name}: mean/std need {c} values (one per channel)")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device) -> "ArrayDataset":
        rows = self.rows.to(device) if self.rows is not None else None
        return ArrayDataset(self.images.to(device), self.labels.to(device), self.classes, self.mean, self.std,
                            self.name, self.meta, rows, self.source_len)

    def source_rows(self) -> torch.Tensor:
        """Each sample's row in the full split (what per-sample files such as teacher features align with)."""
        if self.rows is not None:
            return self.rows
        return torch.arange(len(self.images), device=self.images.device)

    def subset(self, index) -> "ArrayDataset":
        index = torch.as_tensor(index, dtype=torch.long, device=self.images.device)
        return ArrayDataset(self.images[index], self.labels[index], self.classes, self.mean, self.std,
                            self.name, self.meta, self.source_rows()[index], self.source_len)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        key = (x_uint8.device, tuple(self.mean), tuple(self.std))
        cached = getattr(self, "_norm_cache", None)
        if cached is None or cached[0] != key:  # made once per device, not copied to the device every batch
            cached = (key, torch.tensor(self.mean, device=x_uint8.device).view(1, -1, 1, 1),
                      torch.tensor(self.std, device=x_uint8.device).view(1, -1, 1, 1))
            self._norm_cache = cached
        _, mean, std = cached
        return (x_uint8.float() / 255.0 - mean) / std


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator determined by (seed, epoch) alone."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))


def draw_crop_flip(n: int, pad: int, gen: torch.Generator, flip: bool = True):
    """The random draws of ``random_crop_flip`` for n samples: (row offsets, column offsets, flip mask)."""
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen) if pad > 0 else None
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen) if pad > 0 else None
    mask = (torch.rand(n, generator=gen) < 0.5) if flip else None
    return oy, ox, mask


def apply_crop_flip(x: torch.Tensor, pad: int, oy, ox, mask) -> torch.Tensor:
    n, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        rows = (oy.to(dev)[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = xp[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if mask is not None:
        x = torch.where(mask.to(dev)[:, None, None, None], x.flip(3), x)
    return x


def random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random crop of the original size from a zero-padded batch, then random horizontal flip, per sample."""
    return apply_crop_flip(x, pad, *draw_crop_flip(len(x), pad, gen, flip))


class Loader:
    """Batches (:class:`~flowkd.data.batch.Batch`: normalised float images, labels, and ``index``, the samples'
    positions in ``data``, what a teacher given as precomputed per-sample features looks its rows up by) from an
    ArrayDataset, on the dataset's device.

    ``set_epoch(e)`` picks epoch e's order and augmentation; iterating without it replays epoch 0.
    With ``world > 1`` (distributed training) every rank draws the same order and augmentation and
    takes its contiguous share of each global batch of ``batch_size``: the ranks' shares together are
    exactly the single-process batch. A last batch smaller than ``world`` is dropped.
    Consecutive batches are gathered, augmented and normalised together, about ``chunk_bytes`` of float
    images at a time (a few large operations instead of a dozen small ones per batch); the batches are views
    of that chunk and equal, bit for bit, the ones made one at a time (``chunk_bytes=0``). The default
    (``None``) is 64 MiB on a GPU (fewer kernel launches) and 8 MiB on a CPU, where a chunk that stays in the
    cache is faster and the training waits less at each chunk's start.
    """

    def __init__(self, data: ArrayDataset, batch_size: int = 128, *, shuffle: bool = False,
                 augment: bool = False, pad: int = 4, seed: int = 0, drop_last: bool = False,
                 channels_last: bool = False, rank: int = 0, world: int = 1, chunk_bytes: int | None = None):
        if batch_size < 1:
            raise FlowKDError(f"batch size must be positive, got {batch_size}")
        if batch_size < world:
            raise FlowKDError(f"batch size {batch_size} is smaller than the number of processes {world}")
        self.data, self.batch_size, self.shuffle, self.augment, self.pad = data, batch_size, shuffle, augment, pad
        self.seed, self.drop_last, self.channels_last = seed, drop_last, channels_last
        self.rank, self.world = rank, world
        self.chunk_bytes = chunk_bytes if chunk_bytes is not None else (
            64 << 20 if data.images.device.type == "cuda" else 8 << 20)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.data)
        if self.drop_last or (self.world > 1 and n % self.batch_size and n % self.batch_size < self.world):
            return n // self.batch_size
        return -(-n // self.batch_size)

    def _share(self, lo: int, hi: int) -> tuple[int, int]:
        """This rank's contiguous share of the global batch at [lo, hi) of the epoch's order."""
        part = torch.arange(hi - lo).tensor_split(self.world)[self.rank]
        return lo + int(part[0]), lo + int(part[-1]) + 1

    def __iter__(self) -> Iterator[Batch]:
        gen = epoch_generator(self.seed, self.epoch)
        n = len(self.data)
        dev = self.data.images.device
        order = torch.randperm(n, generator=gen).to(dev) if self.shuffle else None
        bounds = [(i * self.batch_size, min(n, (i + 1) * self.batch_size)) for i in range(len(self))]
        if self.augment:  # the whole epoch's draws, batch after batch of one stream, sent to the device at once
            per = [draw_crop_flip(hi - lo, self.pad, gen) for lo, hi in bounds]
            every = [torch.cat(d).to(dev) if d[0] is not None else None for d in zip(*per)] if per else []
        batches = [self._share(lo, hi) for lo, hi in bounds] if self.world > 1 else bounds
        sample_bytes = 4 * int(np.prod(self.data.shape))
        per_chunk = max(1, self.chunk_bytes // max(1, sample_bytes * self.batch_size))
        for c in range(0, len(batches), per_chunk):
            group = batches[c:c + per_chunk]
            if all(a[1] == b[0] for a, b in zip(group, group[1:])):
                sel = slice(group[0][0], group[-1][1])
                idx = order[sel] if order is not None else torch.arange(sel.start, sel.stop, device=dev)
            else:  # ranks' shares: not contiguous in the epoch's order
                sel = torch.cat([torch.arange(lo, hi) for lo, hi in group]).to(dev)
                idx = order[sel] if order is not None else sel
            x, y = self.data.images[idx], self.data.labels[idx]
            if self.augment:
                x = apply_crop_flip(x, self.pad, *(d[sel] if d is not None else None for d in every))
            x = self.data.normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            at = 0
            for lo, hi in group:
                b = slice(at, at + hi - lo)
                at = b.stop
                yield Batch(x[b], y[b], idx[b])
