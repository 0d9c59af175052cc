"""Whole-image, sliding-window and multi-scale + flip inference, and logits to labels.

Follows MMSeg's test-time behaviour so numbers compare with their model zoo:

- ``whole``: the full tile in one forward pass (the LoveDA configs' ``mode="whole"``).
- ``slide``: overlapping ``window`` crops every ``stride`` pixels, logits summed and divided by
  how many crops cover each pixel (MMSeg's ``slide_inference``). A tile no larger than the
  window is a single crop, i.e. exactly whole-tile inference.
- ``ms+flip``: per scale, the image is resized (bilinear, ``align_corners=False``) to
  ``int(H * scale + 0.5)`` (mmcv's rounding), predicted, the logits are resized back to the
  original size and turned into softmax probabilities (MMSeg's order: resize, then softmax);
  with ``flip`` the horizontally flipped image as well (its output flipped back). The
  probabilities of all passes are averaged.

Models follow docs/CONTRACTS.md: ``model(images)`` with images uint8/float 0..255
``[B, 3, H, W]`` returns logits ``[B, C, H, W]`` at the input resolution. The evaluation loop
over a loader, which runs these, is :func:`loveda_utils.evaluation.loop.evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data.classes import NUM_CLASSES

__all__ = [
    "MS_FLIP_SCALES",
    "Mode",
    "Model",
    "labels_from_logits",
    "predict",
    "predict_ms_flip",
    "predict_slide",
    "predict_whole",
]

#: MMSeg's multi-scale test ratios for LoveDA (``img_ratios`` of its ``aug_test``).
MS_FLIP_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

Model = nn.Module | Callable[[torch.Tensor], torch.Tensor]
Mode = Literal["whole", "slide"]


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got {shape}")


def _check_logits(logits: torch.Tensor, images: torch.Tensor, num_classes: int | None) -> None:
    b, _, h, w = images.shape
    if (
        not isinstance(logits, torch.Tensor)
        or logits.ndim != 4
        or logits.shape[0] != b
        or tuple(logits.shape[2:]) != (h, w)
        or (num_classes is not None and logits.shape[1] != num_classes)
    ):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        want = f"[{b}, {num_classes if num_classes is not None else 'C'}, {h}, {w}]"
        raise ValueError(
            f"the model returned {shape} for images {tuple(images.shape)}; expected logits "
            f"{want} at the input resolution (see docs/CONTRACTS.md)"
        )


def predict_whole(
    model: Model, images: torch.Tensor, num_classes: int | None = None
) -> torch.Tensor:
    """Whole-tile inference: ``model(images)``, checked to be logits ``[B, C, H, W]``."""
    _check_images(images)
    logits = model(images)
    _check_logits(logits, images, num_classes)
    return logits


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return pair


def predict_slide(
    model: Model,
    images: torch.Tensor,
    window: int | Sequence[int],
    stride: int | Sequence[int],
    num_classes: int = NUM_CLASSES,
) -> torch.Tensor:
    """Sliding-window inference (MMSeg's ``slide_inference``): float32 logits ``[B, C, H, W]``.

    Crops of ``window`` pixels start every ``stride`` pixels; the last crop of a row/column is
    shifted back to end at the border. Each pixel gets the mean of the logits of the crops
    covering it. Where the tile is smaller than the window, the crop is the whole tile
    (no padding), so a small tile gives exactly whole-tile inference.

    Raises:
        ValueError: if ``stride`` exceeds ``window`` (pixels would be left uncovered).
    """
    _check_images(images)
    win_h, win_w = _pair(window, "window")
    str_h, str_w = _pair(stride, "stride")
    if str_h > win_h or str_w > win_w:
        raise ValueError(
            f"stride {(str_h, str_w)} is larger than window {(win_h, win_w)}: "
            "pixels between windows would never be predicted; use stride <= window"
        )
    b, _, h, w = images.shape
    rows = max(h - win_h + str_h - 1, 0) // str_h + 1
    cols = max(w - win_w + str_w - 1, 0) // str_w + 1
    # Summed in float32 even under autocast: many bf16 additions would lose precision.
    logits = torch.zeros((b, num_classes, h, w), dtype=torch.float32, device=images.device)
    count = torch.zeros((1, 1, h, w), dtype=torch.float32, device=images.device)
    for row in range(rows):
        for col in range(cols):
            y2 = min(row * str_h + win_h, h)
            x2 = min(col * str_w + win_w, w)
            y1, x1 = max(y2 - win_h, 0), max(x2 - win_w, 0)
            crop = images[:, :, y1:y2, x1:x2]
            logits[:, :, y1:y2, x1:x2] += predict_whole(model, crop, num_classes).float()
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def predict(
    model: Model,
    images: torch.Tensor,
    mode: Mode = "whole",
    window: int | Sequence[int] = 1024,
    stride: int | Sequence[int] = 768,
    num_classes: int = NUM_CLASSES,
) -> torch.Tensor:
    """Logits ``[B, C, H, W]`` by ``mode`` ``"whole"`` or ``"slide"``."""
    if mode == "whole":
        return predict_whole(model, images, num_classes)
    if mode == "slide":
        return predict_slide(model, images, window, stride, num_classes)
    raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def predict_ms_flip(
    model: Model,
    images: torch.Tensor,
    scales: Sequence[float] = MS_FLIP_SCALES,
    flip: bool = True,
    mode: Mode = "whole",
    window: int | Sequence[int] = 1024,
    stride: int | Sequence[int] = 768,
    num_classes: int = NUM_CLASSES,
) -> torch.Tensor:
    """Multi-scale (+ flip) test-time augmentation: mean softmax probabilities ``[B, C, H, W]``.

    See the module docstring for the exact recipe (MMSeg's ``aug_test``). Images are resized
    in float32 (uint8 cannot be interpolated); the result is float32 at the input resolution.
    """
    _check_images(images)
    scales = tuple(float(s) for s in scales)
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive ratios, got {scales}")
    b, _, h, w = images.shape
    size = (h, w)
    floats = images.float()
    probs = torch.zeros((b, num_classes, h, w), dtype=torch.float32, device=images.device)
    passes = 0
    for scale in scales:
        scaled_size = (max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1))
        scaled = images if scaled_size == size else _resize(floats, scaled_size)
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            logits = predict(model, x, mode, window, stride, num_classes).float()
            if flipped:
                logits = logits.flip(-1)
            probs += _resize(logits, size).softmax(dim=1)
            passes += 1
            del logits
    return probs / passes


def labels_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=1)`` (the first maximum on ties), without the CPU's slow case.

    On the CPU, ``argmax`` over the class dimension of NCHW logits is a strided reduction, far
    slower than over channels-last logits. For NCHW logits the labels come from ``amax``, which
    is vectorised across the row, and one compare: the same labels (as uint8), at about the
    cost of the channels-last ``argmax`` (timings: ``benchmarks/RESULTS.md``).
    Channels-last logits, other devices and NaN logits (``amax`` would hide them) take
    ``argmax`` itself.
    """
    num_classes = logits.shape[1]
    if (
        logits.device.type != "cpu"
        or logits.ndim != 4
        or num_classes > 255
        or not logits.is_floating_point()
        or not logits.is_contiguous()
    ):
        return logits.argmax(dim=1)
    top = logits.amax(dim=1, keepdim=True)
    if bool(top.isnan().any()):
        return logits.argmax(dim=1)
    # Weight C for class 0 down to 1 for class C-1: the largest weighted hit is the first max.
    weights = torch.arange(num_classes, 0, -1, dtype=torch.uint8).view(1, -1, 1, 1)
    return num_classes - ((logits == top) * weights).amax(dim=1)
