"""Load the configured dataset: (train, test) ArrayDatasets, optionally as stratified subsets."""

from __future__ import annotations

import numpy as np

from ..config import Config
from ..errors import FlowKDError
from .arrays import ArrayDataset

__all__ = ["load_data"]


def _stratified(data: ArrayDataset, n: int, seed: int) -> ArrayDataset:
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


def load_data(cfg: Config) -> tuple[ArrayDataset, ArrayDataset]:
    d = cfg.data
    if d.name == "digits":
        from .digits import load_digits
        train_set, test_set = load_digits(d.test_fraction, cfg.seed)
    else:
        from .readers import load_dataset
        if not d.root:
            raise FlowKDError(f"data.root is required for dataset {d.name!r}")
        if d.download:  # the fetchable datasets (flowkd.data.fetch.ARCHIVES); others are read as they are
            from .fetch import ARCHIVES, ensure
            if d.name in ARCHIVES:
                ensure(d.name, d.root, progress=cfg.progress)
        opts = {"cache_dir": d.cache_dir} if d.cache_dir else {}
        train_set, test_set = load_dataset(d.name, d.root, **opts)
    return _stratified(train_set, d.train_subset, cfg.seed), _stratified(test_set, d.test_subset, cfg.seed + 1)
