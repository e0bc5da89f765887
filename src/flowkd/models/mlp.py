"""A plain multi-layer perceptron: a teacher with nothing in common with a CNN student."""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_model

__all__ = ["MLP"]


class MLP(nn.Module):
    """flatten -> (fc_i -> ReLU)* -> head. Taps: fc1_relu, fc2_relu, ...; the last one is the representation."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (256, 256), num_classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten()
        dims = (in_features, *hidden)
        for i, (a, b) in enumerate(zip(dims, dims[1:]), start=1):
            setattr(self, f"fc{i}", nn.Linear(a, b))
            setattr(self, f"fc{i}_relu", nn.ReLU())
        self.depth = len(hidden)
        self.head = nn.Linear(dims[-1], num_classes)
        self.flow_taps = tuple(f"fc{i}_relu" for i in range(1, self.depth + 1))
        self.representation = self.flow_taps[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for i in range(1, self.depth + 1):
            x = getattr(self, f"fc{i}_relu")(getattr(self, f"fc{i}")(x))
        return self.head(x)


@register_model("mlp")
def mlp(in_channels=3, num_classes=10, in_size=32, width=1.0):
    """Two hidden layers of 256 x ``width`` units."""
    h = max(1, int(round(256 * width)))
    return MLP(in_channels * in_size * in_size, (h, h), num_classes)
