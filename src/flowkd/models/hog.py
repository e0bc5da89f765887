"""Histograms of oriented gradients as a (parameter-free) teacher network: the fully heterogeneous case.

Follows scikit-image's ``skimage.feature.hog`` (its reference; tested against it): central-difference
gradients (zero on the border), per pixel the channel with the largest gradient magnitude, unsigned
orientations in [0, 180) split into ``orientations`` bins, magnitudes averaged per ``cell`` x ``cell``
pixels, then every ``block`` x ``block`` group of cells L2-Hys normalised (eps 1e-5, clip 0.2). Batched
on whatever device the images are on. The descriptor is tap ``descriptor``; the model has no classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_model

__all__ = ["HOG"]


class HOG(nn.Module):
    flow_taps = ("descriptor",)
    representation = "descriptor"

    def __init__(self, orientations: int = 9, cell: int = 8, block: int = 2):
        super().__init__()
        self.orientations, self.cell, self.block = orientations, cell, block
        # bin i holds orientations in [edges[i], edges[i+1]); edges as the reference compares them (float32)
        edges = torch.tensor([180.0 / orientations * i for i in range(1, orientations)], dtype=torch.float32)
        self.register_buffer("edges", edges.double(), persistent=False)
        self.descriptor = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        n, c, h, w = x.shape
        g_row, g_col = torch.zeros_like(x), torch.zeros_like(x)
        g_row[:, :, 1:-1, :] = x[:, :, 2:, :] - x[:, :, :-2, :]
        g_col[:, :, :, 1:-1] = x[:, :, :, 2:] - x[:, :, :, :-2]
        mag = torch.hypot(g_row, g_col)
        if c > 1:  # per pixel, the channel with the strongest gradient
            pick = mag.argmax(1, keepdim=True)
            g_row, g_col, mag = g_row.gather(1, pick), g_col.gather(1, pick), mag.gather(1, pick)
        ori = torch.rad2deg(torch.atan2(g_row, g_col)) % 180
        bins = torch.bucketize(ori, self.edges, right=True)  # (n, 1, h, w) in [0, orientations)
        cr, cc = h // self.cell, w // self.cell
        votes = torch.zeros(n, self.orientations, h, w, dtype=x.dtype, device=x.device).scatter_(1, bins, mag)
        votes = votes[:, :, : cr * self.cell, : cc * self.cell]
        hist = votes.reshape(n, self.orientations, cr, self.cell, cc, self.cell).sum((3, 5)) / self.cell**2
        hist = hist.permute(0, 2, 3, 1)  # (n, cells_r, cells_c, orientations)
        b = self.block
        blocks = hist.unfold(1, b, 1).unfold(2, b, 1)  # (n, br, bc, orientations, b, b)
        blocks = blocks.permute(0, 1, 2, 4, 5, 3).reshape(n, cr - b + 1, cc - b + 1, -1)
        eps = 1e-5
        blocks = blocks / torch.sqrt((blocks**2).sum(-1, keepdim=True) + eps**2)
        blocks = blocks.clamp(max=0.2)
        blocks = blocks / torch.sqrt((blocks**2).sum(-1, keepdim=True) + eps**2)
        return self.descriptor(blocks.reshape(n, -1).float())


@register_model("hog")
def hog(in_channels=3, num_classes=10, in_size=32, width=1.0):
    """HOG descriptor (9 orientations, cells of in_size/4 pixels, 2x2-cell blocks); no parameters, no classifier."""
    return HOG(9, max(2, in_size // 4), 2)
