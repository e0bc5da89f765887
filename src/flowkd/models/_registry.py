from __future__ import annotations

from torch import nn

from ..registry import Registry

MODELS: Registry = Registry("model")


def register_model(name: str):
    return MODELS.register(name)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3, in_size: int = 32,
                 width: float = 1.0) -> nn.Module:
    """Build a registered model; ``width`` multiplies its channels / hidden units."""
    return MODELS.get(name)(in_channels=in_channels, num_classes=num_classes, in_size=in_size, width=width)
