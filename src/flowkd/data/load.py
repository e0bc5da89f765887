"""Load a dataset by name: (train, test) ArrayDatasets, optionally as stratified subsets."""

from __future__ import annotations

import numpy as np

from ..errors import FlowKDError
from .arrays import ArrayDataset

__all__ = ["load_split", "stratified_subset", "stratified_index"]


def stratified_subset(data: ArrayDataset, n: int, seed: int) -> ArrayDataset:
    """A seeded, class-stratified subset of ``n`` items (``data`` itself when n <= 0 or n >= N)."""
    if n <= 0 or n >= len(data):
        return data
    return data.subset(stratified_index(data, n, seed))


def stratified_index(data: ArrayDataset, n: int, seed: int) -> list[int]:
    """Sorted positions of a seeded, class-stratified sample of ``n`` items (all of them if n <= 0 or n >= N)."""
    if n <= 0 or n >= len(data):
        return list(range(len(data)))
    labels = data.labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # round-robin over classes in a random order keeps the subset stratified
    per_class = [order[labels[order] == c] for c in range(data.num_classes)]
    picked = [idx for group in zip(*per_class) for idx in group][:n] if all(len(p) for p in per_class) else list(order[:n])
    if len(picked) < n:
        rest = np.setdiff1d(order, picked, assume_unique=True)
        picked += list(rest[: n - len(picked)])
    return sorted(int(i) for i in picked)


def load_split(name: str, root: str = "", *, seed: int = 0, cache_dir: str = "", test_fraction: float = 0.25,
               download: bool = False, progress: bool = True, **unused) -> tuple[ArrayDataset, ArrayDataset]:
    """The (train, test) datasets of ``name``: ``digits`` (embedded; a seeded stratified ``test_fraction``
    held out) or a dataset folder under ``root`` (see ``flowkd.data.readers``; ``download``: fetch a
    fetchable dataset first when it is missing, see ``flowkd.data.fetch``)."""
    if name == "digits":
        from .digits import load_digits
        return load_digits(test_fraction, seed)
    from .readers import load_dataset
    if not root:
        raise FlowKDError(f"data.root is required for dataset {name!r}")
    if download:  # the fetchable datasets (flowkd.data.fetch.ARCHIVES); others are read as they are
        from .fetch import ARCHIVES, ensure
        if name in ARCHIVES:
            ensure(name, root, progress=progress)
    opts = {"cache_dir": cache_dir} if cache_dir else {}
    return load_dataset(name, root, **opts)
