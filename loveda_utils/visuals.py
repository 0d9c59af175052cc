"""Figures: palette overlays, sample plots, model comparisons and error maps.

Colours come from :mod:`loveda_utils.classes` (MMSeg's LoveDA palette), so every figure in the
workbook agrees with MMSeg's visuals.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .classes import IGNORE_INDEX, colorize

Sample = dict[str, Any]


def to_display_rgb(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image as uint8 ``[H, W, 3]`` for display (CHW tensors transposed, floats stretched)."""
    image = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3:
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:  # a normalised or float image: stretch for display
        lo, hi = np.percentile(image, (1, 99))
        image = ((image - lo) / max(hi - lo, 1e-6) * 255).clip(0, 255).astype(np.uint8)
    return image


def overlay(image: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette-coloured labels over the image; ignored pixels keep the image."""
    rgb = to_display_rgb(image).astype(np.float32)
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    colours = colorize(labels).astype(np.float32)
    keep = (labels == IGNORE_INDEX)[..., None]
    out = np.where(keep, rgb, (1 - alpha) * rgb + alpha * colours)
    return out.clip(0, 255).astype(np.uint8)


def plot_sample(
    sample: Sample,
    suptitle: str | None = None,
    prediction: torch.Tensor | np.ndarray | None = None,
    alpha: float = 0.5,
) -> Figure:
    """Plot a sample (``image`` and optional ``mask``) and an optional prediction."""
    panels = [("image", to_display_rgb(sample["image"]))]
    if "mask" in sample:
        panels += [("mask", colorize(sample["mask"])), ("overlay", overlay(sample["image"], sample["mask"], alpha))]
    if prediction is not None:
        panels.append(("prediction", colorize(prediction)))
    fig, axs = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (title, picture) in zip(axs[0], panels):
        ax.imshow(picture)
        ax.set_title(title)
        ax.axis("off")
    title = suptitle or " / ".join(str(sample[k]) for k in ("split", "scene", "name") if k in sample)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
