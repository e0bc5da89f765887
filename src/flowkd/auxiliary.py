"""The auxiliary teacher: the student's own architecture made wider (docs/method.md §3)."""

from __future__ import annotations

from typing import Callable, Union

from torch import nn

from .errors import FlowKDError
from .models import create_model

__all__ = ["make_auxiliary"]

StudentSpec = Union[str, Callable[[float], nn.Module]]


def make_auxiliary(student: StudentSpec, width: float = 2.0, *, base_width: float = 1.0, **model_kwargs) -> nn.Module:
    """Build the auxiliary teacher for ``student``: ``width`` x the student's channels and hidden units.

    ``student`` is a registered model name (``"verytiny"``, ``"digits_cnn"``, ...; extra keyword
    arguments such as ``num_classes``/``in_channels``/``in_size`` go to ``create_model``), or a factory
    ``width -> nn.Module`` for a user's own family (called with ``base_width * width``).
    """
    if width <= 0:
        raise FlowKDError(f"auxiliary width multiplier must be positive, got {width}")
    if isinstance(student, str):
        return create_model(student, width=base_width * width, **model_kwargs)
    if isinstance(student, nn.Module):
        raise FlowKDError("make_auxiliary needs the student's family, not an instance: pass a model name or a factory width -> nn.Module")
    if callable(student):
        model = student(base_width * width)
        if not isinstance(model, nn.Module):
            raise FlowKDError(f"the student factory returned {type(model).__name__}, not an nn.Module")
        return model
    raise FlowKDError(f"make_auxiliary: unsupported student spec {student!r}")
