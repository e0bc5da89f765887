"""Data: whole-tensor datasets, a device-side loader, the batch it yields, and readers."""

from .arrays import ArrayDataset, Loader
from .batch import Batch

__all__ = ["ArrayDataset", "Batch", "Loader"]
