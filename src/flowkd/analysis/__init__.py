"""Information-flow analysis: per-layer estimates of what representations carry about the labels."""

from .mi import quadratic_mi
from .plots import render_flow

__all__ = ["quadratic_mi", "render_flow"]
