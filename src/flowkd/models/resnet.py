"""PreAct ResNet-18 for 32x32 inputs (3x3 stem, no max-pool), with the pytorch-cifar parameter names.

The stem is conv1 -> bn1 -> ReLU (the shared teacher checkpoint carries this stem BN); each block
pre-activates (BN -> ReLU -> conv) and its shortcut starts from the pre-activated input (identity or
1x1 conv). This is the topology the shared teacher was trained with: its BN running statistics match
the activations layer by layer, and it scores 92.2 % on the CIFAR-10 test set. The representation is the global-average-pooled 512-d vector fed to
``linear``: tap ``"linear:input"``. Layer taps: ``layer1@4``, ``layer2@4``, ``layer3@2`` (docs/method.md §4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["PreActResNet18"]


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else out
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    flow_taps = ("layer1@4", "layer2@4", "layer3@2", "linear:input")
    representation = "linear:input"

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        w = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        planes = w[0]
        for i, (p, stride) in enumerate(zip(w, (1, 2, 2, 2)), start=1):
            layer = nn.Sequential(PreActBlock(planes, p, stride), PreActBlock(p, p, 1))
            setattr(self, f"layer{i}", layer)
            planes = p
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.pool(out).flatten(1))


@register_model("preact_resnet18")
def preact_resnet18(in_channels=3, num_classes=10, in_size=32, width=1.0):
    """PreAct ResNet-18 for 32x32 images (the paper's CIFAR-10 teacher): 4 stages of 2 blocks, 64-512 channels."""
    return PreActResNet18(in_channels, num_classes, width)
