"""Readers for image datasets on disk, each returning an :class:`~flowkd.data.arrays.ArrayDataset`.

* :func:`read_cifar` - CIFAR-10 / CIFAR-100 in their python-pickle format;
* :func:`read_stl10` - STL-10 in its binary format (labelled train/test splits);
* :func:`read_image_folder` - ``root/<split>/<class>/*.{png,jpg,jpeg}``, decoded once in parallel and cached
  as an ``.npz`` keyed by a content hash of the split;
* :func:`load_dataset` - (train, test) by dataset name, with the test split normalised by the train split's
  statistics (or by the published constants in :data:`NORMALIZATION`).

No torchvision; Pillow is imported only when images have to be decoded.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import pickle
import secrets
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import FlowKDError
from ..registry import Registry
from .arrays import ArrayDataset

__all__ = ["NORMALIZATION", "IMAGE_EXTENSIONS", "read_cifar", "read_stl10", "read_image_folder",
           "load_dataset", "dataset_names"]

#: Published per-channel (mean, std) in [0, 1] units.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
}

#: File extensions (lower case) that :func:`read_image_folder` picks up; matched case-insensitively.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_PIL_MISSING = "reading image folders needs Pillow: pip install 'flowkd[images]'"
_CACHE_FORMAT = b"flowkd-image-folder-v1"  # part of the content hash: bump it when the cache layout changes
_MODES = {"L": 1, "RGB": 3}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _existing_dir(root) -> Path:
    root = Path(root)
    if not root.exists():
        raise FlowKDError(f"data path not found: {root}")
    if not root.is_dir():
        raise FlowKDError(f"data path is not a directory: {root}")
    return root


def _check_split(split: str, valid: Sequence[str] = ("train", "test")) -> None:
    if split not in valid:
        raise FlowKDError(f"unknown split {split!r}; valid: {', '.join(valid)}")


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
        raise FlowKDError(f"cannot read CIFAR pickle {path}: {_one_line(e)}") from None
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
    _check_split(split)
    root = _existing_dir(root)
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
    _check_split(split)
    root = _existing_dir(root)
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


# ---------------------------------------------------------------------------------------- image folder


def _list_images(split_dir: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names, image paths (class by class, files sorted by name) and labels of one split."""
    if not split_dir.is_dir():
        raise FlowKDError(f"image folder split not found: {split_dir}")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FlowKDError(f"no images in {split_dir}: expected one sub-folder per class holding "
                          f"{'/'.join(IMAGE_EXTENSIONS)} files")
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        cdir = split_dir / cls
        names = sorted(e.name for e in os.scandir(cdir)
                       if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())
        if not names:
            raise FlowKDError(f"empty class folder {cdir}: expected {'/'.join(IMAGE_EXTENSIONS)} files")
        paths += [cdir / n for n in names]
        labels += [label] * len(names)
    return classes, paths, np.asarray(labels, dtype=np.int64)


def _content_hash(split_dir: Path, paths: Sequence[Path]) -> str:
    """blake2b over (relative path, file bytes) of every image, length-prefixed so no two listings collide."""
    h = hashlib.blake2b(_CACHE_FORMAT, digest_size=16)
    for p in paths:
        rel = p.relative_to(split_dir).as_posix().encode("utf-8")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise FlowKDError(f"cannot read image {p}: {_one_line(e)}") from None
        h.update(len(rel).to_bytes(8, "little"))
        h.update(rel)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _import_pil():
    try:
        from PIL import Image
    except ImportError:
        raise FlowKDError(_PIL_MISSING) from None
    return Image


def _decode_chunk(paths: Sequence[str], mode: str, size: tuple[int, int], first: str) -> np.ndarray:
    """Decode ``paths`` into uint8 (n, C, H, W); every image must have ``mode`` and ``size`` (W, H) like ``first``.

    Runs in a worker process (module-level so it pickles) or in-process when ``workers=1``.
    """
    Image = _import_pil()
    w, h = size
    out = np.empty((len(paths), _MODES[mode], h, w), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                if im.mode not in _MODES:
                    raise FlowKDError(f"unsupported image mode {im.mode!r} in {p}: expected 'L' or 'RGB' "
                                      f"(like the first image {first})")
                if im.mode != mode:
                    raise FlowKDError(f"image mode {im.mode!r} in {p} differs from {mode!r} of the first image "
                                      f"{first}; all images must share one mode")
                if im.size != size:
                    raise FlowKDError(f"image size {im.size[0]}x{im.size[1]} in {p} differs from {w}x{h} of the "
                                      f"first image {first}; all images must share one size")
                im.load()
                a = np.asarray(im)
        except FlowKDError:
            raise
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            raise FlowKDError(f"cannot decode image {p}: {_one_line(e)}") from None
        if a.shape != ((h, w) if mode == "L" else (h, w, 3)) or a.dtype != np.uint8:
            raise FlowKDError(f"cannot decode image {p}: got an array {a.dtype} {a.shape} for mode {mode!r}")
        out[i] = a[None] if mode == "L" else a.transpose(2, 0, 1)
    return out


def _pool_context():
    # fork starts workers without re-importing torch (~2 s each); the workers only run Pillow and numpy.
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def _decode_images(paths: Sequence[Path], workers: int) -> np.ndarray:
    """All of ``paths`` as one uint8 (N, C, H, W) array, decoded in ``workers`` processes (1: in this one)."""
    Image = _import_pil()
    first = str(paths[0])
    try:
        with Image.open(first) as im:
            mode, size = im.mode, im.size
    except Exception as e:
        raise FlowKDError(f"cannot decode image {first}: {_one_line(e)}") from None
    if mode not in _MODES:
        raise FlowKDError(f"unsupported image mode {mode!r} in {first}: expected 'L' or 'RGB'")
    strs = [str(p) for p in paths]
    n = len(strs)
    chunk = max(1, min(1024, math.ceil(n / (workers * 8))))
    chunks = [strs[i:i + chunk] for i in range(0, n, chunk)]
    if workers == 1 or len(chunks) == 1:
        return _decode_chunk(strs, mode, size, first)
    out = np.empty((n, _MODES[mode], size[1], size[0]), dtype=np.uint8)
    ex = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_pool_context())
    try:
        futures = [ex.submit(_decode_chunk, c, mode, size, first) for c in chunks]
        for i, fut in enumerate(futures):  # in order, so the first bad file (in sorted order) is the one reported
            out[i * chunk:i * chunk + len(chunks[i])] = fut.result()
    except BrokenProcessPool as e:
        raise FlowKDError(f"decoding {Path(first).parent.parent} failed: a worker process died "
                          f"({_one_line(e)})") from None
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return out


def _load_cache(path: Path, n: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels, cached_classes = z["images"], z["labels"], [str(c) for c in z["classes"]]
    except FileNotFoundError:
        return None
    except Exception as e:
        warnings.warn(f"ignoring unreadable cache {path}: {_one_line(e)}", stacklevel=3)
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != n or labels.shape != (n,) \
            or cached_classes != classes:
        warnings.warn(f"ignoring cache {path}: its contents do not match the folder", stacklevel=3)
        return None
    return images, labels.astype(np.int64)


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> bool:
    """Write the cache atomically (temp file in the same folder, then ``os.replace``); False when it cannot."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # not mkstemp: its 0600 mode would keep the cache from others sharing the data; this honours the umask
        tmp = str(path.parent / f".{path.stem}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, labels=labels, classes=np.asarray(classes, dtype=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return True
    except OSError as e:
        warnings.warn(f"could not write the image cache {path}: {_one_line(e)}", stacklevel=3)
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def read_image_folder(root, split: str = "train", cache_dir=None, workers: int | None = None,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> ArrayDataset:
    """Images under ``root/<split>/<class>/`` (png/jpg/jpeg, any case) as one uint8 (N, C, H, W) dataset.

    Classes are the sorted sub-folder names, files are sorted by name within a class. Every image must have the
    size and mode (``L`` -> 1 channel, ``RGB`` -> 3) of the first one. The split is decoded once, in ``workers``
    processes (default: every CPU; 1 decodes in this process), and cached in ``cache_dir`` (default
    ``root/.flowkd-cache``) under a name holding a blake2b hash of every (relative path, file bytes), so any
    changed, added or removed file means a fresh decode. Without ``mean``/``std`` they are computed from the
    images (see :func:`load_dataset` for applying the train split's statistics to the test split).

    ``meta`` holds ``source``, ``split``, ``hash``, ``cached`` (whether the cache was used) and ``cache`` (its
    path, or None when it could not be written).
    """
    root = _existing_dir(root)
    if not split or split in (".", "..") or "/" in split or os.sep in split:
        raise FlowKDError(f"bad split name {split!r}: expected a folder name such as 'train' or 'test'")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise FlowKDError(f"workers must be at least 1, got {workers}")
    if (mean is None) != (std is None):
        raise FlowKDError("give both mean and std, or neither")
    split_dir = root / split
    classes, paths, labels = _list_images(split_dir)
    digest = _content_hash(split_dir, paths)
    cache_path = Path(cache_dir) if cache_dir is not None else root / ".flowkd-cache"
    cache_path = cache_path / f"{root.name or 'images'}-{split}-{digest}.npz"
    hit = _load_cache(cache_path, len(paths), classes)
    if hit is not None:
        images, labels = hit
        cached, cache_file = True, cache_path
    else:
        images = _decode_images(paths, workers)
        cached = False
        cache_file = cache_path if _write_cache(cache_path, images, labels, classes) else None
    meta = {"source": str(root), "split": split, "hash": digest, "cached": cached,
            "cache": str(cache_file) if cache_file else None}
    return ArrayDataset(images, labels, classes, tuple(mean) if mean is not None else (),
                        tuple(std) if std is not None else (), name=f"{root.name or 'images'}/{split}", meta=meta)


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
        raise FlowKDError(f"data path not found: {root}")
    return loader(root, **options)
