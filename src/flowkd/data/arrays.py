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

__all__ = ["ArrayDataset", "Loader", "epoch_generator", "draw_views", "apply_views", "view_count", "identity_view"]


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
        return x_uint8.float().div_(255.0).sub_(mean).div_(std)  # in place: the same values, no temporaries


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator determined by (seed, epoch) alone."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))


def view_count(pad: int, flip: bool = True) -> int:
    """How many distinct views a crop of the original size from a ``pad``-padded image (and a horizontal flip)
    has: (2 pad + 1)^2 offsets, times 2 with the flip (pad 4: 162)."""
    return (2 * pad + 1) ** 2 * (2 if flip else 1)


def identity_view(pad: int) -> int:
    """The view id of the un-augmented image (the centre crop, not flipped)."""
    return (pad * (2 * pad + 1) + pad) * 2


def view_dtype(pad: int) -> torch.dtype:
    return torch.uint8 if view_count(pad) <= 256 else torch.int16


def draw_crop_flip(n: int, pad: int, gen: torch.Generator, flip: bool = True):
    """The random draws of ``random_crop_flip`` for n samples: (row offsets, column offsets, flip mask)."""
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen) if pad > 0 else None
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen) if pad > 0 else None
    mask = (torch.rand(n, generator=gen) < 0.5) if flip else None
    return oy, ox, mask


def draw_views(n: int, pad: int, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """n random views (the draws of :func:`draw_crop_flip`, in that order) as view ids: a view is its crop offset
    and flip, ``(row * (2 pad + 1) + column) * 2 + flipped`` — one byte for pad <= 5."""
    oy, ox, mask = draw_crop_flip(n, pad, gen, flip)
    zero = torch.zeros(n, dtype=torch.long)
    oy = oy if oy is not None else zero + pad
    ox = ox if ox is not None else zero + pad
    flips = mask.long() if mask is not None else zero
    return ((oy * (2 * pad + 1) + ox) * 2 + flips).to(view_dtype(pad))


def _view_offsets(pad: int, h: int, w: int, device) -> torch.Tensor:
    """For every view id, the (h * w) positions in a zero-padded (h + 2 pad) x (w + 2 pad) plane that its pixels
    come from, as int32: the crop and the flip are one gather."""
    side, wp = 2 * pad + 1, w + 2 * pad
    v = torch.arange(view_count(pad), device=device)
    oy, ox, flipped = (v // 2) // side, (v // 2) % side, (v % 2).bool()
    cols = torch.arange(w, device=device)
    cols = torch.where(flipped[:, None], w - 1 - cols, cols) + ox[:, None]            # (V, w)
    rows = torch.arange(h, device=device) + oy[:, None]                                  # (V, h)
    return (rows[:, :, None] * wp + cols[:, None, :]).flatten(1).to(torch.int32)        # (V, h * w)


_OFFSETS: dict = {}


def apply_views(x: torch.Tensor, views: torch.Tensor, pad: int) -> torch.Tensor:
    """The images ``x`` (N, C, H, W) seen through ``views`` (N view ids, see :func:`draw_views`): each sample's
    crop of the original size from the zero-padded image, flipped when its view says so. One gather for the
    whole batch, on uint8 (the index of a sample's pixels is its view's row of a small table, shared by its
    channels)."""
    n, c, h, w = x.shape
    key = (pad, h, w, x.device)
    table = _OFFSETS.get(key)
    if table is None:
        table = _OFFSETS[key] = _view_offsets(pad, h, w, x.device).long()
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    src = table[views.to(x.device).long()]                                               # (N, h * w)
    return torch.gather(xp.reshape(n, c, -1), 2, src[:, None, :].expand(n, c, h * w)).view(n, c, h, w)


def apply_crop_flip(x: torch.Tensor, pad: int, oy, ox, mask) -> torch.Tensor:
    n = len(x)
    zero = torch.zeros(n, dtype=torch.long)
    oy = oy.cpu().long() if oy is not None else zero + pad
    ox = ox.cpu().long() if ox is not None else zero + pad
    flips = mask.cpu().long() if mask is not None else zero
    return apply_views(x, (oy * (2 * pad + 1) + ox) * 2 + flips, pad)


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
                 channels_last: bool = False, rank: int = 0, world: int = 1, chunk_bytes: int | None = None,
                 views: torch.Tensor | None = None):
        if batch_size < 1:
            raise FlowKDError(f"batch size must be positive, got {batch_size}")
        if batch_size < world:
            raise FlowKDError(f"batch size {batch_size} is smaller than the number of processes {world}")
        if views is not None and (views.dim() != 2 or views.shape[1] != len(data) or not len(views)):
            raise FlowKDError(f"views must be (K, {len(data)}) view ids, one row per view, got {tuple(views.shape)}")
        self.data, self.batch_size, self.shuffle, self.augment, self.pad = data, batch_size, shuffle, augment, pad
        self.seed, self.drop_last, self.channels_last = seed, drop_last, channels_last
        self.rank, self.world = rank, world
        self.views = views  # a bank's views: epoch e serves sample i as views[e % K, i] (no random draws)
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

    def _bounds(self) -> list[tuple[int, int]]:
        n = len(self.data)
        return [(i * self.batch_size, min(n, (i + 1) * self.batch_size)) for i in range(len(self))]

    def _draw(self, epoch: int):
        """Epoch ``epoch``'s order (None: the dataset's) and, augmenting, each position's view in that order."""
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(len(self.data), generator=gen) if self.shuffle else None
        views = None
        if self.augment and self.views is None:  # the whole epoch's draws, batch after batch of one stream
            per = [draw_views(hi - lo, self.pad, gen) for lo, hi in self._bounds()]
            views = torch.cat(per) if per else torch.zeros(0, dtype=view_dtype(self.pad))
        return order, views

    def epoch_views(self, epoch: int) -> torch.Tensor:
        """The view of every sample (by its position in the dataset) in epoch ``epoch``, as this loader draws it
        when it augments (a sample that no batch takes, with ``drop_last``, is given the un-augmented view):
        what a bank of views precomputes as its view k for epoch k."""
        order, drawn = self._draw(epoch)
        n = len(self.data)
        views = torch.full((n,), identity_view(self.pad), dtype=view_dtype(self.pad))
        if drawn is not None:
            pos = order[:len(drawn)] if order is not None else torch.arange(len(drawn))
            views[pos] = drawn
        return views

    def __iter__(self) -> Iterator[Batch]:
        dev = self.data.images.device
        order, drawn = self._draw(self.epoch)
        order = order.to(dev) if order is not None else None
        drawn = drawn.to(dev) if drawn is not None else None
        bank = self.views[self.epoch % len(self.views)].to(dev) if self.views is not None else None
        bounds = self._bounds()
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
            view = bank[idx] if bank is not None else drawn[sel] if drawn is not None else None
            if view is not None:
                x = apply_views(x, view, self.pad)
            x = self.data.normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            at = 0
            for lo, hi in group:
                b = slice(at, at + hi - lo)
                at = b.stop
                yield Batch(x[b], y[b], idx[b], view[b] if view is not None else None)
