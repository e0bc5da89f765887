"""Readers for image datasets on disk, each returning an :class:`~flowkd.data.arrays.ArrayDataset`.

* :func:`read_cifar` - CIFAR-10 / CIFAR-100 in their python-pickle format;
* :func:`read_stl10` - STL-10 in its binary format (labelled train/test splits);
* :func:`read_image_folder` (in :mod:`flowkd.data.imagefolder`) - ``root/<split>/<class>/*.{png,jpg,jpeg}``,
  decoded once in parallel and cached as an ``.npz`` keyed by a content hash of the split;
* :func:`load_dataset` - (train, test) by dataset name, with the test split normalised by the train split's
  statistics (or by the published constants in :data:`NORMALIZATION`).

No torchvision; Pillow is imported only when images have to be decoded.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import FlowKDError
from ..registry import Registry
from .arrays import ArrayDataset
from .imagefolder import IMAGE_EXTENSIONS, check_split, existing_dir, one_line, read_image_folder

__all__ = ["NORMALIZATION", "IMAGE_EXTENSIONS", "read_cifar", "read_stl10", "read_image_folder",
           "load_dataset", "dataset_names"]

#: Published per-channel (mean, std) in [0, 1] units.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
}

def _locate(root: Path, names: Sequence[str], subdir: str, what: str) -> Path:
    """The directory (``root`` or ``root/subdir``) that holds every file in ``names``."""
    for d in (root, root / subdir):
        if all((d / n).is_file() for n in names):
            return d
    for d in (root, root / subdir):
        if any((d / n).is_file() for n in names):
            missing = next(n for n in names if not (d / n).is_file())
            raise FlowKDError(f"{what} file not found: {d / missing}")
    raise FlowKDError(f"{what} file not found: {root / names[0]} (also looked in {root / subdir})")


# ----------------------------------------------------------------------------------------------- CIFAR


class _ArrayUnpickler(pickle.Unpickler):
    """Loads the CIFAR pickles (dicts of lists and numpy arrays) and refuses anything else: no code runs."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):  # written by numpy 1.x; numpy 2 renamed it numpy._core
            try:
                return super().find_class("numpy._core" + module[len("numpy.core"):], name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, OSError) as e:
        raise FlowKDError(f"cannot read CIFAR pickle {path}: {one_line(e)}") from None
    if not isinstance(obj, dict):
        raise FlowKDError(f"cannot read CIFAR pickle {path}: expected a dict, got {type(obj).__name__}")
    return obj


def _field(d: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise FlowKDError(f"CIFAR pickle {path} has no {key!r} entry (has: {', '.join(map(repr, d))})")


def _names(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path)
    data = np.asarray(_field(d, "data", path))
    labels = np.asarray(_field(d, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise FlowKDError(f"CIFAR pickle {path}: 'data' must be uint8 rows of 3072 values, "
                          f"got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise FlowKDError(f"CIFAR pickle {path}: {len(data)} images but {label_key!r} of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar(root, split: str = "train", variant: str = "cifar10") -> ArrayDataset:
    """CIFAR-10 or CIFAR-100 (fine labels) from the python-pickle release, normalised by :data:`NORMALIZATION`.

    The files may sit in ``root`` or in ``root/cifar-10-batches-py`` / ``root/cifar-100-python``. The CIFAR-10
    train split is every ``data_batch_<k>`` present (k = 1, 2, ... with no gaps; the release has 1..5).
    """
    if variant not in ("cifar10", "cifar100"):
        raise FlowKDError(f"unknown CIFAR variant {variant!r}; valid: cifar10, cifar100")
    check_split(split)
    root = existing_dir(root)
    if variant == "cifar10":
        what = "CIFAR-10"
        base = _locate(root, ["batches.meta", "test_batch" if split == "test" else "data_batch_1"],
                       "cifar-10-batches-py", what)
        if split == "test":
            files = [base / "test_batch"]
        else:
            ks = sorted(int(p.name.rsplit("_", 1)[1]) for p in base.glob("data_batch_*")
                        if p.name.rsplit("_", 1)[1].isdigit())
            if ks != list(range(1, len(ks) + 1)):
                gap = next(k for k in range(1, len(ks) + 2) if k not in ks)
                raise FlowKDError(f"{what} file not found: {base / f'data_batch_{gap}'} "
                                  f"(have data_batch_{', data_batch_'.join(map(str, ks))})")
            files = [base / f"data_batch_{k}" for k in ks]
        meta_file, names_key, label_key = base / "batches.meta", "label_names", "labels"
    else:
        what = "CIFAR-100"
        base = _locate(root, ["meta", split], "cifar-100-python", what)
        files = [base / split]
        meta_file, names_key, label_key = base / "meta", "fine_label_names", "fine_labels"
    classes = _names(_field(_load_pickle(meta_file), names_key, meta_file))
    parts = [_cifar_batch(f, label_key) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    mean, std = NORMALIZATION[variant]
    return ArrayDataset(images, labels, classes, mean, std, name=f"{variant}/{split}",
                        meta={"source": str(root), "files": [str(f) for f in files]})


# ---------------------------------------------------------------------------------------------- STL-10


def read_stl10(root, split: str = "train", mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> ArrayDataset:
    """STL-10's labelled ``train``/``test`` split from the binary release (``root`` or ``root/stl10_binary``).

    Images are stored column-major (each 3x96x96 image has H and W swapped) and labels run 1..10; both are
    fixed here. Without ``mean``/``std`` they are computed from the images.
    """
    check_split(split)
    root = existing_dir(root)
    xname, yname = f"{split}_X.bin", f"{split}_y.bin"
    base = _locate(root, [xname, yname, "class_names.txt"], "stl10_binary", "STL-10")
    side = 96
    per = 3 * side * side
    x = np.fromfile(base / xname, dtype=np.uint8)
    y = np.fromfile(base / yname, dtype=np.uint8)
    if x.size == 0 or x.size % per:
        raise FlowKDError(f"STL-10 file {base / xname}: {x.size} bytes is not a whole number of "
                          f"3x{side}x{side} images ({per} bytes each)")
    n = x.size // per
    if y.size != n:
        raise FlowKDError(f"STL-10 file {base / yname}: {y.size} labels for {n} images in {base / xname}")
    if y.min() < 1:
        raise FlowKDError(f"STL-10 file {base / yname}: label 0 found, labels run from 1")
    images = x.reshape(n, 3, side, side).transpose(0, 1, 3, 2)
    classes = [s.strip() for s in (base / "class_names.txt").read_text(encoding="utf-8").splitlines() if s.strip()]
    return ArrayDataset(np.ascontiguousarray(images), y.astype(np.int64) - 1, classes,
                        tuple(mean) if mean is not None else (), tuple(std) if std is not None else (),
                        name=f"stl10/{split}", meta={"source": str(root)})


# ------------------------------------------------------------------------------------------ by name

_DATASETS: Registry[Callable[..., tuple[ArrayDataset, ArrayDataset]]] = Registry("dataset")


def _options(name: str, options: dict, allowed: Sequence[str]) -> dict:
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise FlowKDError(f"dataset {name!r} takes no option {', '.join(bad)}; valid: {', '.join(allowed) or 'none'}")
    return options


def _same_layout(train: ArrayDataset, test: ArrayDataset) -> None:
    if test.classes != train.classes:
        raise FlowKDError(f"{test.name}: classes {test.classes} differ from {train.name}'s {train.classes}")
    if test.shape != train.shape:
        raise FlowKDError(f"{test.name}: images of shape {test.shape} differ from {train.name}'s {train.shape}")


@_DATASETS.register("cifar10")
def _cifar10(root, **options):
    _options("cifar10", options, ())
    return read_cifar(root, "train", "cifar10"), read_cifar(root, "test", "cifar10")


@_DATASETS.register("cifar100")
def _cifar100(root, **options):
    _options("cifar100", options, ())
    return read_cifar(root, "train", "cifar100"), read_cifar(root, "test", "cifar100")


@_DATASETS.register("stl10")
def _stl10(root, **options):
    _options("stl10", options, ())
    train = read_stl10(root, "train")
    return train, read_stl10(root, "test", train.mean, train.std)


@_DATASETS.register("imagefolder")
def _imagefolder(root, **options):
    opts = _options("imagefolder", options, ("cache_dir", "workers", "mean", "std"))
    train = read_image_folder(root, "train", **opts)
    opts.update(mean=train.mean, std=train.std)
    test = read_image_folder(root, "test", **opts)
    _same_layout(train, test)
    return train, test


@_DATASETS.register("cifar10_jpg")
def _cifar10_jpg(root, **options):
    opts = _options("cifar10_jpg", options, ("cache_dir", "workers"))
    mean, std = NORMALIZATION["cifar10"]
    out = []
    for split in ("train", "test"):
        ds = read_image_folder(root, split, mean=mean, std=std, **opts)
        ds.name = f"cifar10_jpg/{split}"
        out.append(ds)
    _same_layout(*out)
    return tuple(out)


def dataset_names() -> list[str]:
    """The names :func:`load_dataset` accepts."""
    return _DATASETS.names()


def load_dataset(name: str, root, **options) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of dataset ``name`` (see :func:`dataset_names`) found under ``root``.

    ``imagefolder`` takes ``cache_dir``, ``workers``, ``mean``, ``std`` (without mean/std the train split's
    statistics normalise both splits); ``cifar10_jpg`` (a folder of CIFAR-10 JPEGs) takes ``cache_dir`` and
    ``workers`` and uses :data:`NORMALIZATION` ``["cifar10"]``; ``stl10`` normalises by its train split.
    """
    loader = _DATASETS.get(name)
    root = Path(root)
    if not root.exists():
        existing_dir(root)  # the one "not found" message
    return loader(root, **options)
