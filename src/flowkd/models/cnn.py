"""Small CNNs: the paper's CIFAR "tiny"/"very tiny" students, and a digits-sized variant.

Three conv blocks (conv 3x3 -> BN -> ReLU -> max-pool 2), flatten, fc + ReLU (the representation), fc
classifier. Parameter names match the reference checkpoints (conv1, conv1_bn, ..., fc1, fc2), and every
step is its own module so taps can reach it: pool1, pool2, pool3 (after pooling) and fc1_relu.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FlowKDError


def _after_blocks(size: int, padding: int) -> int:
    for _ in range(3):
        size = (size + 2 * padding - 2) // 2
    return size

from ._registry import register_model

__all__ = ["SmallCNN"]


def _scale(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


class SmallCNN(nn.Module):
    flow_taps = ("pool1", "pool2", "pool3", "fc1_relu")
    representation = "fc1_relu"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        in_size: int = 32,
        channels: tuple[int, int, int] = (8, 16, 32),
        hidden: int = 64,
        padding: int = 0,
    ):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1, self.conv1_bn = nn.Conv2d(in_channels, c1, 3, padding=padding), nn.BatchNorm2d(c1)
        self.conv2, self.conv2_bn = nn.Conv2d(c1, c2, 3, padding=padding), nn.BatchNorm2d(c2)
        self.conv3, self.conv3_bn = nn.Conv2d(c2, c3, 3, padding=padding), nn.BatchNorm2d(c3)
        self.conv1_relu, self.conv2_relu, self.conv3_relu = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.pool1, self.pool2, self.pool3 = nn.MaxPool2d(2), nn.MaxPool2d(2), nn.MaxPool2d(2)
        size = _after_blocks(in_size, padding)
        if size < 1:
            least = next(s for s in range(1, 1000) if _after_blocks(s, padding) >= 1)
            raise FlowKDError(f"{in_size}x{in_size} images are too small for this CNN's three conv+pool blocks "
                              f"(padding {padding}): it needs at least {least}x{least}; pick a model for small "
                              "images (e.g. digits_cnn) or larger images")
        self.fc1 = nn.Linear(c3 * size * size, hidden)
        self.fc1_relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1_relu(self.conv1_bn(self.conv1(x))))
        x = self.pool2(self.conv2_relu(self.conv2_bn(self.conv2(x))))
        x = self.pool3(self.conv3_relu(self.conv3_bn(self.conv3(x))))
        return self.fc2(self.fc1_relu(self.fc1(x.flatten(1))))


@register_model("verytiny")
def verytiny(in_channels=3, num_classes=10, in_size=32, width=1.0):
    """The paper's "very tiny" CIFAR student: conv 8/16/32 (no padding), fc 64, at ``width`` x those sizes."""
    return SmallCNN(in_channels, num_classes, in_size,
                    tuple(_scale(c, width) for c in (8, 16, 32)), _scale(64, width), padding=0)


@register_model("tiny")
def tiny(in_channels=3, num_classes=10, in_size=32, width=1.0):
    """The paper's "tiny" CIFAR network (the very tiny one x2): conv 16/32/64, fc 128."""
    return verytiny(in_channels, num_classes, in_size, 2.0 * width)


@register_model("digits_cnn")
def digits_cnn(in_channels=1, num_classes=10, in_size=8, width=1.0):
    """A small CNN for 8x8 digits: conv 4/8/16 with padding 1, fc 32, at ``width`` x those sizes."""
    return SmallCNN(in_channels, num_classes, in_size,
                    tuple(_scale(c, width) for c in (4, 8, 16)), _scale(32, width), padding=1)
