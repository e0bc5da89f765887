"""Teacher features as data: per-sample features computed once, looked up by sample instead of recomputed.

Two uses, one mechanism (``FeatureBank``):

- **precomputed files** — a teacher that cannot run in the training process (a large model run elsewhere,
  an extractor in another framework) is given as a file of per-sample features aligned with the training
  split: row i belongs to training image i in the dataset's own order (the order the readers load and
  ``flowkd features`` writes). Formats:

  * ``.npy``: one array (N, ...) -> one tap, named ``features``;
  * ``.npz`` / ``.safetensors``: one array per tap, the key being the tap name used in ``pairs``; an
    optional integer ``labels`` array (N,) is checked against the dataset's labels, which catches rows
    written in another order. ``.safetensors`` needs the ``[safetensors]`` extra.

- **cached extractors** — ``precompute = true`` on a frozen teacher (e.g. HOG) computes its taps once on the
  augmentation-free training images and keeps them on the device.

A bank is aligned to the training set once (``align``): its rows are checked (count, labels) and reordered to
the dataset's positions (a ``train_subset`` picks its rows from the full-split file). During training the
teacher looks features up by the batch's sample positions (``Batch.index``, ``flowkd.teachers.FeatureTeacher``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .data.arrays import ArrayDataset, Loader
from .errors import FlowKDError, first_line
from .io import atomic_write_bytes, safetensors_torch
from .registry import closest
from .taps import frozen_taps

__all__ = ["FeatureBank", "load_features", "save_features", "compute_features", "FEATURE_SUFFIXES"]

FEATURE_SUFFIXES = (".npy", ".npz", ".safetensors")
LABELS_KEY = "labels"


class FeatureBank:
    """Per-sample features ``{tap: (N, ...)}`` (optionally with the N labels they were computed for)."""

    def __init__(self, features: dict[str, torch.Tensor], labels: torch.Tensor | None = None,
                 source: str = "features", representation: str = ""):
        if not features:
            raise FlowKDError(f"teacher features {source}: no feature arrays")
        sizes = {k: len(v) for k, v in features.items()}
        if len(set(sizes.values())) != 1:
            raise FlowKDError(f"teacher features {source}: arrays have different row counts: "
                              + ", ".join(f"{k}={n}" for k, n in sizes.items()))
        self.features, self.labels, self.source = features, labels, source
        n = len(self)
        if labels is not None and tuple(labels.shape) != (n,):
            raise FlowKDError(f"teacher features {source}: '{LABELS_KEY}' must have shape ({n},), got {tuple(labels.shape)}")
        if representation and representation not in features:
            self.check_taps([representation])
        self.representation = representation or (next(iter(features)) if len(features) == 1 else "")
        self.flow_taps = tuple(features)  # shallow -> deep as stored

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape[1:])}" for k, v in self.features.items())
        return f"FeatureBank({self.source}, {len(self)} rows; {shapes})"

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape[1:]) for k, v in self.features.items()}

    def check_taps(self, specs: Iterable[str]) -> None:
        for spec in specs:
            if spec not in self.features:
                raise FlowKDError(f"unknown tap {spec!r} in teacher features {self.source}; it holds: "
                                  + ", ".join(closest(spec, list(self.features))))

    def to(self, device) -> "FeatureBank":
        return FeatureBank({k: v.to(device) for k, v in self.features.items()},
                           self.labels.to(device) if self.labels is not None else None, self.source, self.representation)

    def align(self, data: ArrayDataset) -> "FeatureBank":
        """The rows of ``data``'s samples, in ``data``'s order, on its device (checks count and labels)."""
        if len(self) != data.source_len:
            raise FlowKDError(f"teacher features {self.source}: {len(self)} rows but the training split has "
                              f"{data.source_len} images; it needs one row per training image, in the dataset's order")
        dev = data.images.device
        rows = data.source_rows().to(dev)
        if self.labels is not None:
            mine = self.labels.to(dev)[rows]
            bad = torch.nonzero(mine != data.labels).flatten()
            if len(bad):
                raise FlowKDError(f"teacher features {self.source}: labels differ from the training split's at "
                                  f"{len(bad)} of {len(rows)} rows (first: row {int(rows[bad[0]])}); "
                                  "the rows are not in the dataset's order")
        labels = data.labels if self.labels is not None else None
        return FeatureBank({k: v.to(dev)[rows] for k, v in self.features.items()}, labels, self.source,
                           self.representation)

    def lookup(self, index: torch.Tensor, specs: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """``{tap: features of the samples at index}`` as float32 (every tap, or those in ``specs``)."""
        keys = list(specs) if specs is not None else list(self.features)
        return {k: self.features[k][index].float() for k in keys}


def _check_array(key: str, a: torch.Tensor, source: str) -> torch.Tensor:
    if a.dim() < 2:
        raise FlowKDError(f"teacher features {source}: array {key!r} has shape {tuple(a.shape)}; "
                          "expected one row per sample: (N, D) or (N, C, H, W)")
    if not a.is_floating_point():
        a = a.float()
    finite = torch.isfinite(a.reshape(len(a), -1)).all(1)
    if not bool(finite.all()):
        row = int(torch.nonzero(~finite)[0])
        raise FlowKDError(f"teacher features {source}: array {key!r} has non-finite values (first at row {row})")
    return a


def load_features(path, representation: str = "") -> FeatureBank:
    """Read a ``.npy`` / ``.npz`` / ``.safetensors`` file of per-sample teacher features (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise FlowKDError(f"teacher features file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in FEATURE_SUFFIXES:
        raise FlowKDError(f"teacher features {path}: unknown format {suffix!r}; use {', '.join(FEATURE_SUFFIXES)}")
    try:
        if suffix == ".safetensors":
            raw = safetensors_torch(f"reading {path}").load_file(str(path), device="cpu")
        elif suffix == ".npy":
            raw = {"features": torch.from_numpy(np.load(path, allow_pickle=False))}
        else:
            with np.load(path, allow_pickle=False) as z:
                raw = {k: torch.from_numpy(z[k]) for k in z.files}
    except FlowKDError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy/zip/safetensors errors come in many types
        raise FlowKDError(f"cannot read teacher features {path}: {first_line(e)}") from None
    labels = raw.pop(LABELS_KEY, None)
    if labels is not None:
        if labels.is_floating_point() or labels.dim() != 1:
            raise FlowKDError(f"teacher features {path}: '{LABELS_KEY}' must be a 1-D integer array")
        labels = labels.long()
    feats = {k: _check_array(k, v, str(path)) for k, v in raw.items()}
    return FeatureBank(feats, labels, str(path), representation)


def save_features(path, bank: FeatureBank) -> None:
    """Write a bank atomically as ``.npz`` (or ``.safetensors``), with its labels when it has them."""
    path = Path(path)
    arrays = {k: v.detach().cpu().contiguous() for k, v in bank.features.items()}
    if LABELS_KEY in arrays:
        raise FlowKDError(f"a tap may not be called {LABELS_KEY!r} in a features file")
    if bank.labels is not None:
        arrays[LABELS_KEY] = bank.labels.detach().cpu().long().contiguous()
    if path.suffix == ".safetensors":
        atomic_write_bytes(path, safetensors_torch(f"writing {path}").save(arrays))
    elif path.suffix == ".npz":
        buf = io.BytesIO()
        np.savez(buf, **{k: v.numpy() for k, v in arrays.items()})
        atomic_write_bytes(path, buf.getvalue())
    else:
        raise FlowKDError(f"features are written as .npz or .safetensors, not {path.suffix or path.name!r}")


@torch.no_grad()
def compute_features(model: nn.Module, specs: Iterable[str], data: ArrayDataset, batch_size: int = 1024,
                     dtype: torch.dtype | None = None) -> FeatureBank:
    """A frozen model's taps on every image of ``data`` (normalised, no augmentation), in ``data``'s order."""
    specs = list(dict.fromkeys(specs))
    chunks: dict[str, list[torch.Tensor]] = {s: [] for s in specs}
    with frozen_taps(model, specs) as frozen:
        for batch in Loader(data, batch_size):
            for k, v in frozen(batch.x).items():
                chunks[k].append(v.to(dtype) if dtype is not None else v.float())
    return FeatureBank({k: torch.cat(v) for k, v in chunks.items()}, data.labels.clone(),
                       f"{type(model).__name__} (computed once)", representation="")
