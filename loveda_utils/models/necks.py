"""Necks between a plain ViT and a pyramid decoder.

A plain Vision Transformer keeps one token grid at 1/16 of the input through all its
blocks, while UPerNet wants four maps at 1/4, 1/8, 1/16 and 1/32. MMSeg's MAE and BEiT
configs bridge the two with MMSeg's ``Feature2Pyramid`` neck (its ``upernet_mae`` base
model config, ``rescales=[4, 2, 1, 0.5]``): four intermediate block outputs are rescaled,
one per scale, by

* x4: transposed conv (2x2, stride 2), BatchNorm, GELU, transposed conv (2x2, stride 2);
* x2: one transposed conv (2x2, stride 2);
* x1: identity;
* x0.5: 2x2 max-pool, stride 2.

:class:`Feature2Pyramid` is that neck. (MMSeg's ``MultiLevelNeck``, used by its
``upernet_vit-b16_mln`` configs, is the interpolating variant: 1x1 lateral convs, bilinear
resizing, then 3x3 convs; the learned deconvolutions above are what MAE-style
fine-tuning uses.)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["Feature2Pyramid"]

#: The rescale factors Feature2Pyramid supports, finest first.
_SUPPORTED_RESCALES = (4.0, 2.0, 1.0, 0.5)


def _rescaler(scale: float, channels: int) -> nn.Module:
    if scale == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
            nn.BatchNorm2d(channels),
            nn.GELU(),
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
        )
    if scale == 2:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if scale == 1:
        return nn.Identity()
    return nn.MaxPool2d(kernel_size=2, stride=2)


class Feature2Pyramid(nn.Module):
    """Turn ``len(rescales)`` same-size ViT feature maps into a pyramid, one scale each.

    Args:
        channels: The ViT's embedding dimension (input and output channels of every map).
        rescales: One factor per input map, each one of 4, 2, 1, 0.5.

    ``forward(features)`` takes a sequence of ``[B, channels, h, w]`` maps (same ``h, w``)
    and returns a list with map ``i`` resized by ``rescales[i]``. With an even ``h, w`` the
    0.5 scale is exact; the owning network pads its input so that it is.
    """

    def __init__(self, channels: int, rescales: Sequence[float] = (4, 2, 1, 0.5)) -> None:
        super().__init__()
        bad = [s for s in rescales if float(s) not in _SUPPORTED_RESCALES]
        if bad or not rescales:
            raise ValueError(
                f"rescales={tuple(rescales)!r}: each factor must be one of "
                f"{_SUPPORTED_RESCALES} (MMSeg Feature2Pyramid)"
            )
        self.rescales = tuple(float(s) for s in rescales)
        self.ops = nn.ModuleList(_rescaler(s, channels) for s in self.rescales)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.ops):
            raise ValueError(
                f"Feature2Pyramid got {len(features)} feature maps, expected "
                f"{len(self.ops)} (one per rescale {self.rescales})"
            )
        return [op(x) for op, x in zip(self.ops, features, strict=True)]
