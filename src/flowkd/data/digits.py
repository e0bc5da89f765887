"""scikit-learn's 8x8 handwritten digits (1,797 images, ships with the package): the embedded demo data."""

from __future__ import annotations

import numpy as np

from ..errors import FlowKDError
from .arrays import ArrayDataset

__all__ = ["load_digits"]


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """A stratified train/test split of the digits, as uint8 images (pixel values 0..16 scaled x15)."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError:
        raise FlowKDError("the digits dataset needs scikit-learn: pip install 'flowkd[demo]'") from None
    d = _load()
    images = (d.images.astype(np.uint8) * 15)[:, None]  # 0..240, exact
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[rng.choice(idx, int(round(len(idx) * test_fraction)), replace=False)] = True
    classes = [str(c) for c in range(10)]
    train_set = ArrayDataset(images[~test], labels[~test], classes, name="digits/train")
    test_set = ArrayDataset(images[test], labels[test], classes, train_set.mean, train_set.std, name="digits/test")
    return train_set, test_set
