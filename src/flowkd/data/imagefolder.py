"""Image folders ``root/<split>/<class>/*.{png,jpg,jpeg}``: decoded once, in parallel, into a uint8 array
cached as an ``.npz`` whose name carries a content hash of the split (a changed folder is re-decoded).

Every image must share the first one's size and mode; a corrupt file, an empty class folder or a missing
split each stop with one line naming the path. Pillow is imported only when images have to be decoded.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import secrets
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import FlowKDError, warn
from .arrays import ArrayDataset

__all__ = ["IMAGE_EXTENSIONS", "read_image_folder", "check_split", "existing_dir", "one_line"]

#: File extensions (lower case) that :func:`read_image_folder` picks up; matched case-insensitively.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_PIL_MISSING = "reading image folders needs Pillow: pip install 'flowkd[images]'"
_CACHE_FORMAT = b"flowkd-image-folder-v1"  # part of the content hash: bump it when the cache layout changes
_MODES = {"L": 1, "RGB": 3}


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def existing_dir(root) -> Path:
    root = Path(root)
    if not root.exists():
        where = "" if root.is_absolute() else (f" (resolved to {root.resolve()}: a relative data.root is read from "
                                               "the working folder, not the config's; run from there or give an "
                                               "absolute path)")
        raise FlowKDError(f"data path not found: {root}{where}")
    if not root.is_dir():
        raise FlowKDError(f"data path is not a directory: {root}")
    return root


def check_split(split: str, valid: Sequence[str] = ("train", "test")) -> None:
    if split not in valid:
        raise FlowKDError(f"unknown split {split!r}; valid: {', '.join(valid)}")


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
    other, nested = [], []  # what is not read: say so once
    for label, cls in enumerate(classes):
        cdir = split_dir / cls
        names = []
        for e in os.scandir(cdir):
            if e.is_dir():
                nested.append(f"{cls}/{e.name}/")
            elif not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file():
                names.append(e.name)
            elif not e.name.startswith("."):
                other.append(f"{cls}/{e.name}")
        if not names:
            raise FlowKDError(f"empty class folder {cdir}: expected {'/'.join(IMAGE_EXTENSIONS)} files"
                              + (f" (it holds only sub-folders, e.g. {nested[-1]}: images are read from the class "
                                 "folder itself, not from folders inside it)" if nested and nested[-1].startswith(cls + "/") else ""))
        names.sort()
        paths += [cdir / n for n in names]
        labels += [label] * len(names)
    if other or nested:
        parts = ([f"{len(other)} file(s) that are not {'/'.join(IMAGE_EXTENSIONS)} images (e.g. {other[0]})"] if other else []) + \
                ([f"{len(nested)} folder(s) inside class folders, with whatever they hold (e.g. {nested[0]}): "
                  "images are read only directly from each class folder"] if nested else [])
        warn(f"{split_dir}: skipped " + "; and ".join(parts))
    return classes, paths, np.asarray(labels, dtype=np.int64)


def _content_hash(split_dir: Path, paths: Sequence[Path]) -> str:
    """blake2b over (relative path, file bytes) of every image, length-prefixed so no two listings collide."""
    h = hashlib.blake2b(_CACHE_FORMAT, digest_size=16)
    for p in paths:
        rel = p.relative_to(split_dir).as_posix().encode("utf-8")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise FlowKDError(f"cannot read image {p}: {one_line(e)}") from None
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
            raise FlowKDError(f"cannot decode image {p}: {one_line(e)}") from None
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
        raise FlowKDError(f"cannot decode image {first}: {one_line(e)}") from None
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
                          f"({one_line(e)})") from None
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
        warnings.warn(f"ignoring unreadable cache {path}: {one_line(e)}", stacklevel=3)
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
        warnings.warn(f"could not write the image cache {path}: {one_line(e)}", stacklevel=3)
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
    root = existing_dir(root)
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
