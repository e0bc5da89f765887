from __future__ import annotations

from torch import nn

from ..errors import FlowKDError
from ..registry import Registry

MODELS: Registry = Registry("model")


def register_model(name: str):
    return MODELS.register(name)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3, in_size: int = 32,
                 width: float = 1.0, options: dict | None = None) -> nn.Module:
    """Build a model: a registered name (``width`` multiplies its channels / hidden units), or one from
    outside the zoo, ``timm:NAME``, ``torchvision:NAME``, ``py:MODULE:FACTORY``, ``fn:MODULE:FUNCTION``
    (see ``flowkd.models.external``). ``options`` are extra keyword arguments of the model's constructor."""
    from .external import create_external, is_external

    if is_external(name):
        return create_external(name, num_classes=num_classes, in_channels=in_channels, in_size=in_size,
                               width=width, options=options)
    cls = MODELS.get(name)
    try:
        return cls(in_channels=in_channels, num_classes=num_classes, in_size=in_size, width=width, **(options or {}))
    except TypeError as e:
        if not options:
            raise
        raise FlowKDError(f"model {name!r}: bad options {sorted(options)}: {e}") from None
