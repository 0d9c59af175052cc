"""The test segmentation network: a seeded 1x1 convolution of ``image / 255``.

Deterministic and imperfect (every class appears, in patches that follow the image), and
pixel-wise: each output pixel depends on its own input pixel only, so it is flip-equivariant and
sliding windows cannot change it. Shared by the evaluation, per-tile and uncertainty tests.
"""

from __future__ import annotations

import torch
from torch import nn

from loveda_utils.data.classes import NUM_CLASSES


class PixelNet(nn.Module):
    """The 1x1 convolution (module docstring); it records each batch's shape and whether
    autocast was on for it (``calls``, ``autocast``)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, NUM_CLASSES, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 4)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g))
        self.calls: list[tuple[int, ...]] = []
        self.autocast: list[bool] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(images.shape))
        self.autocast.append(torch.is_autocast_enabled(images.device.type))
        return self.conv(images.float() / 255)
