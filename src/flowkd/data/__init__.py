"""Data: whole-tensor datasets, a device-side loader, and readers."""

from .arrays import ArrayDataset, Loader

__all__ = ["ArrayDataset", "Loader"]
