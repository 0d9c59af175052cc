"""Figures of single samples: palette overlays, sample rows, pipeline draws, class frequencies.

Colours come from :mod:`loveda_utils.data.classes` (MMSeg's LoveDA palette), so every figure in the
workbook agrees with MMSeg's visuals. Notebooks 01 (dataset inspection) and 02 (transforms) draw
these; :mod:`loveda_utils.visuals.comparison` reuses the display helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch.utils.data import Dataset

from ..data.classes import CLASS_NAMES, IGNORE_COLOR, IGNORE_INDEX, PALETTE, colorize

Sample = dict[str, Any]


def to_display_rgb(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image as uint8 ``[H, W, 3]`` for display (CHW tensors transposed, floats stretched)."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3:
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:  # a normalised or float image: stretch for display
        lo, hi = np.percentile(array, (1, 99))
        array = ((array - lo) / max(hi - lo, 1e-6) * 255).clip(0, 255).astype(np.uint8)
    return array


def overlay(
    image: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Blend the palette-coloured labels over the image; ignored pixels keep the image."""
    rgb = to_display_rgb(image).astype(np.float32)
    labels = (
        labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    )
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
        panels += [
            ("mask", colorize(sample["mask"])),
            ("overlay", overlay(sample["image"], sample["mask"], alpha)),
        ]
    if prediction is not None:
        panels.append(("prediction", colorize(prediction)))
    fig, axs = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (title, picture) in zip(axs[0], panels):
        ax.imshow(picture)
        ax.set_title(title)
        ax.axis("off")
    title = suptitle or " / ".join(
        str(sample[k]) for k in ("split", "scene", "name") if k in sample
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def rgb_fraction(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    """A 0..255 RGB colour as matplotlib's 0..1 floats."""
    red, green, blue = colour
    return red / 255, green / 255, blue / 255


def legend_handles() -> list[Patch]:
    """Legend patches for the palette (one per class, plus no-data)."""
    handles = [
        Patch(facecolor=rgb_fraction(c), edgecolor="grey", label=n)
        for n, c in zip(CLASS_NAMES, PALETTE)
    ]
    handles.append(Patch(facecolor=rgb_fraction(IGNORE_COLOR), edgecolor="grey", label="no-data"))
    return handles


def plot_class_frequencies(frequencies: pd.DataFrame, split: str | None = None) -> Figure:
    """Bar chart of class shares of the labelled pixels, urban vs rural, plus the no-data share.

    ``frequencies``: the frame from :func:`loveda_utils.data.validation.class_frequencies`.
    """
    df = frequencies if split is None else frequencies[frequencies.split == split]
    labelled = (
        df[df["class"] != "no-data"].groupby(["class", "scene"])["pixels"].sum().unstack("scene")
    )
    labelled = labelled.reindex(list(CLASS_NAMES)).fillna(0)
    shares = labelled / labelled.sum(axis=0).replace(0, np.nan)
    nodata = (
        df[df["class"] == "no-data"].groupby("scene")["pixels"].sum()
        / df.groupby("scene")["pixels"].sum()
    )
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [4, 1]})
    scenes = list(shares.columns)
    width = 0.8 / max(1, len(scenes))
    x = np.arange(len(CLASS_NAMES))
    for i, scene in enumerate(scenes):
        ax.bar(
            x + i * width,
            100 * shares[scene].to_numpy(),
            width,
            label=scene,
            color=[np.array(c) / 255 for c in PALETTE],
            edgecolor="black",
            hatch="" if i == 0 else "//",
        )
    ax.set_xticks(x + width * (len(scenes) - 1) / 2, CLASS_NAMES, rotation=30)
    ax.set_ylabel("% of labelled pixels")
    ax.set_title(
        "Class frequencies"
        + (f" ({split})" if split else "")
        + " - plain: "
        + scenes[0]
        + ("" if len(scenes) < 2 else f", hatched: {scenes[1]}")
    )
    ax2.bar(nodata.index, 100 * nodata.to_numpy(), color="black")
    ax2.set_title("no-data share (%)")
    fig.tight_layout()
    return fig


def plot_samples(dataset: Dataset[Sample], indices: list[int], alpha: float = 0.5) -> Figure:
    """Rows of image | mask | overlay for a few tiles of a dataset, with the palette legend."""
    fig, axs = plt.subplots(len(indices), 3, figsize=(10, 3.3 * len(indices)), squeeze=False)
    for row, index in zip(axs, indices):
        sample = dataset[index]
        row[0].imshow(to_display_rgb(sample["image"]))
        row[0].set_title(f"{sample['split']}/{sample['scene']}/{sample['name']}")
        if "mask" in sample:
            row[1].imshow(colorize(sample["mask"]))
            row[2].imshow(overlay(sample["image"], sample["mask"], alpha))
        for ax in row:
            ax.axis("off")
    axs[0][1].set_title("mask")
    axs[0][2].set_title("overlay")
    fig.legend(handles=legend_handles(), loc="lower center", ncol=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_pipeline_draws(
    sample: Sample,
    pipeline: Callable[[Sample], Sample],
    draws: int = 4,
    seed: int = 0,
    alpha: float = 0.5,
) -> Figure:
    """The same tile through a random pipeline ``draws`` times: image over mask overlay, per draw.

    Image and mask stay aligned when the overlay's colour edges sit on the image's edges.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        outs = [pipeline(dict(sample)) for _ in range(draws)]
    finally:
        torch.random.set_rng_state(generator_state)
    fig, axs = plt.subplots(3, draws + 1, figsize=(3 * (draws + 1), 9), squeeze=False)
    columns = [("original", sample), *[(f"draw {i + 1}", o) for i, o in enumerate(outs)]]
    for col, (title, s) in enumerate(columns):
        axs[0][col].imshow(to_display_rgb(s["image"]))
        axs[0][col].set_title(f"{title} {tuple(s['image'].shape[-2:])}")
        axs[1][col].imshow(colorize(s["mask"]))
        axs[2][col].imshow(overlay(s["image"], s["mask"], alpha))
        for r in range(3):
            axs[r][col].axis("off")
    for r, name in enumerate(["image", "mask", "overlay"]):
        axs[r][0].text(
            -0.08, 0.5, name, transform=axs[r][0].transAxes, rotation=90, va="center", ha="right"
        )
    fig.tight_layout()
    return fig
