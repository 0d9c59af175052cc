"""OpenCV's uint8 image arithmetic, in torch: what mmcv computes when MMSeg augments a tile.

MMSeg's training pipeline runs on OpenCV (through mmcv): bilinear resizing with 11-bit
fixed-point weights, and colour changes in OpenCV's uint8 HSV. torchvision's operations compute
the same quantities differently (float weights, a luma-blend saturation, float hue), so
:mod:`loveda_utils.data.transforms` uses these functions for ``fidelity="mmseg"``. They follow
OpenCV's vectorised code paths, which handle nearly every pixel; ``tests/parity`` checks them
against ``cv2`` on every colour and on real tiles.

Images are uint8 tensors, channels first, in RGB order (OpenCV's are BGR; the arithmetic is the
same per channel).
"""

from __future__ import annotations

import torch

__all__ = ["hsv_to_rgb_cv2", "resize_linear_cv2", "resize_nearest_cv2", "rgb_to_hsv_cv2"]

# --------------------------------------------------------------------------- resize

#: OpenCV's INTER_RESIZE_COEF_BITS: interpolation weights are integers out of 2^11.
_COEF_SCALE = 1 << 11


def _linear_taps(src: int, dst: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and fixed-point weights along one axis, as ``cv::resize`` computes them.

    Half-pixel centres in float32 from the double scale ``src / dst``; taps clamped at the borders
    (weight 0 on the missing neighbour); weights rounded to integers out of 2048.
    """
    scale = 1.0 / (dst / src)
    position = ((torch.arange(dst, dtype=torch.float64) + 0.5) * scale - 0.5).float()
    first = torch.floor(position)
    frac = position - first
    first = first.long()
    frac = torch.where((first < 0) | (first >= src - 1), 0.0, frac)
    first = first.clamp(0, src - 1)
    w1 = torch.round(frac * _COEF_SCALE).to(torch.int32)
    w0 = torch.round((1.0 - frac) * _COEF_SCALE).to(torch.int32)
    return first, (first + 1).clamp(max=src - 1), w0, w1


def resize_linear_cv2(image: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """``cv2.resize(..., INTER_LINEAR)`` of a uint8 ``[C, H, W]`` image to ``size = (h, w)``.

    Rows first: ``S = x0 * a0 + x1 * a1`` in integers, then columns as OpenCV's vectorised
    vertical pass, ``((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16) + 2 >> 2``. An exact
    halving is a 2x2 box average, as OpenCV switches to ``INTER_AREA`` for it. Downscaling (all
    that MMSeg's LoveDA rescale does to a tile) matches OpenCV exactly; enlarging can differ by
    one grey level on a few pixels. The result is channels-last in memory.
    """
    h, w = int(size[0]), int(size[1])
    height, width = image.shape[-2:]
    if (height, width) == (h, w):
        return image
    if (height, width) == (2 * h, 2 * w):
        x = image.to(torch.int32)
        total = x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]
        return ((total + 2) >> 2).to(torch.uint8)
    x0, x1, a0, a1 = _linear_taps(width, w)
    y0, y1, b0, b1 = _linear_taps(height, h)
    # Gathers along the outermost dimension copy whole memory rows: put the indexed axis first.
    columns = image.permute(2, 0, 1).contiguous()  # [W, C, H]
    rows = columns.index_select(0, x0).to(torch.int32) * a0.view(-1, 1, 1)
    rows += columns.index_select(0, x1).to(torch.int32) * a1.view(-1, 1, 1)  # [w, C, H]
    rows = (rows >> 4).permute(2, 0, 1).contiguous()  # [H, w, C]
    out = (rows.index_select(0, y0) * b0.view(-1, 1, 1)) >> 16
    out += (rows.index_select(0, y1) * b1.view(-1, 1, 1)) >> 16
    return ((out + 2) >> 2).to(torch.uint8).permute(2, 0, 1)


def _nearest_taps(src: int, dst: int) -> torch.Tensor:
    """``floor(i * (1 / (dst / src)))`` in double, clamped: ``cv::resize``'s INTER_NEAREST indices."""
    step = 1.0 / (dst / src)
    return torch.floor(torch.arange(dst, dtype=torch.float64) * step).long().clamp(max=src - 1)


def resize_nearest_cv2(image: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """``cv2.resize(..., INTER_NEAREST)`` of ``[..., H, W]`` to ``size = (h, w)`` (masks).

    The same rule as torch's ``nearest`` mode, but with OpenCV's double-precision scale: torch's
    float32 scale picks a neighbouring source pixel at a few positions for some sizes.
    """
    h, w = int(size[0]), int(size[1])
    height, width = image.shape[-2:]
    if (height, width) == (h, w):
        return image
    rows = image.index_select(-2, _nearest_taps(height, h))
    return rows.index_select(-1, _nearest_taps(width, w))


# --------------------------------------------------------------------------- HSV

_HSV_SHIFT = 12  # OpenCV's fixed-point RGB -> HSV: 12 fraction bits
_HALF = 1 << (_HSV_SHIFT - 1)
_DIVISORS = torch.arange(1, 256, dtype=torch.float64)
# OpenCV's division tables: round(255 * 2^12 / v) and round(180 * 2^12 / (6 * diff)); 0 at 0.
_SDIV = torch.cat([torch.zeros(1), torch.round((255 << _HSV_SHIFT) / _DIVISORS)]).long()
_HDIV = torch.cat([torch.zeros(1), torch.round((180 << _HSV_SHIFT) / (6 * _DIVISORS))]).long()
# HSV -> RGB per OpenCV hue H (0..179) and saturation S (0..255), in its float32 arithmetic:
# h = H * (6/180), sector = trunc(h), f = h - sector; the factors that multiply V are
# p = 1 - s, q = 1 - s*f and t = 1 - s*(1-f), the last two fused multiply-adds (one rounding,
# emulated in float64). Tabulated once: 180 x 256 entries instead of that arithmetic per pixel.
_H6 = torch.arange(180, dtype=torch.float32) * torch.tensor(6.0 / 180.0, dtype=torch.float32)
_SECTOR = torch.trunc(_H6)
_FRAC = (_H6 - _SECTOR).double()[:, None]
_S01 = torch.arange(256, dtype=torch.float32) * (1.0 / 255.0)
_P = 1.0 - _S01
_Q = (1.0 - _S01.double()[None, :] * _FRAC).float().flatten()
_T = (1.0 - _S01.double()[None, :] * (1.0 - _FRAC.float()).double()).float().flatten()
# Which of (v, p, q, t) becomes R, G, B in each sector 0..5 (OpenCV's sector_data), per hue.
_SECTOR_RGB = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])
_HUE_RGB = _SECTOR_RGB[_SECTOR.long()]


def rgb_to_hsv_cv2(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``[..., 3, H, W]`` -> OpenCV's uint8 HSV (``H`` 0..179, ``S`` and ``V`` 0..255).

    OpenCV's integer algorithm (``cv2.cvtColor(..., COLOR_RGB2HSV)``): ``V = max(R, G, B)``,
    ``S`` and ``H`` by 12-bit fixed-point division tables; where two channels are the maximum,
    red wins over green over blue.
    """
    x = image.to(torch.int32)
    r, g, b = x.unbind(-3)
    v = x.amax(-3)
    diff = v - x.amin(-3)
    s = (diff * torch.take(_SDIV, v.long()) + _HALF) >> _HSV_SHIFT
    # OpenCV's branch-free select: all-ones masks where V is red (then green).
    is_r = (v == r).to(torch.int32).neg_()
    is_g = (v == g).to(torch.int32).neg_()
    h = (is_r & (g - b)) + (~is_r & ((is_g & (b - r + 2 * diff)) + (~is_g & (r - g + 4 * diff))))
    h = (h * torch.take(_HDIV, diff.long()) + _HALF) >> _HSV_SHIFT
    h += (h >> 31) & 180  # negative hues wrap around
    return torch.stack([h, s, v], -3).to(torch.uint8)


def hsv_to_rgb_cv2(hsv: torch.Tensor) -> torch.Tensor:
    """OpenCV's uint8 HSV ``[..., 3, H, W]`` -> uint8 RGB, as its vectorised ``HSV2RGB_b``.

    ``V / 255`` times the tabulated factor of its hue sector, ``* 255`` and truncated, all in
    float32. OpenCV's scalar tail (the last ``width mod (4 * SIMD lanes)`` pixels of each row)
    rounds instead of truncating: at most one grey level apart there.
    """
    h, s, v = (c.long() for c in hsv.unbind(-3))
    value = v.float() * (1.0 / 255.0)
    hs = h * 256 + s
    table = torch.stack(
        [value, value * torch.take(_P, s), value * torch.take(_Q, hs), value * torch.take(_T, hs)],
        -3,
    )
    which = _HUE_RGB[h].movedim(-1, -3)
    return (torch.gather(table, -3, which) * 255.0).to(torch.uint8)
