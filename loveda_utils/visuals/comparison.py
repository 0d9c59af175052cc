"""Figures comparing models: per-class heatmap, urban vs rural, mIoU vs speed, prediction grids.

Notebook 04 (results comparison) draws them from the results records
(:mod:`loveda_utils.results.table` selects and names the rows); ``03_benchmark.ipynb`` draws one
model's :func:`plot_prediction_grid`. Error maps are green where a prediction is correct, red
where it is wrong and black where the ground truth is no-data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from ..data.classes import IGNORE_INDEX, colorize, raw_to_train
from ..data.pngio import read_png
from ..data.root import resolve_data_root
from ..data.synthetic import is_synthetic
from ..results.schema import Record
from ..results.store import VISUALS_DIR
from ..results.table import record_labels, scene_table, select_records
from .samples import legend_handles, rgb_fraction, to_display_rgb

#: A tile: ``"Split/Scene/name.png"`` or ``(split, scene, name)``.
Tile = str | tuple[str, str, str]

#: Error-map colours: correct, wrong, ignored (no-data in the ground truth).
ERROR_COLORS: tuple[tuple[int, int, int], ...] = ((46, 160, 67), (214, 39, 40), (0, 0, 0))


def _empty_figure(message: str) -> Figure:
    """A one-axes figure saying why there is nothing to plot (a notebook never crashes on it)."""
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    ax.axis("off")
    return fig


def plot_per_class_heatmap(per_class_df: pd.DataFrame | None) -> Figure:
    """Heatmap of per-class IoU (%): models (rows) x classes (columns), each cell annotated.

    ``per_class_df``: :func:`loveda_utils.results.table.per_class_table`; its ``mIoU`` column, when
    present, is set off from the classes by a white line.
    """
    if per_class_df is None or per_class_df.empty:
        return _empty_figure("no runs to compare yet")
    values = per_class_df.to_numpy(dtype=float)
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(1.1 * cols + 4, 0.5 * rows + 2))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(rows):
        for j in range(cols):
            v = values[i, j]
            text = "-" if np.isnan(v) else f"{v:.1f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=9,
                color="black" if not np.isnan(v) and v > 60 else "white",
            )
    ax.set_xticks(range(cols), [str(c) for c in per_class_df.columns], rotation=30, ha="right")
    ax.set_yticks(range(rows), [str(i) for i in per_class_df.index])
    if "mIoU" in per_class_df.columns:
        ax.axvline(list(per_class_df.columns).index("mIoU") - 0.5, color="white", linewidth=3)
    ax.set_title("IoU per class (%)")
    fig.colorbar(image, ax=ax, label="IoU (%)")
    fig.tight_layout()
    return fig


def plot_scene_comparison(records: Sequence[Record]) -> Figure:
    """Urban vs rural mIoU (%) per model, as grouped bars (newest record per run group).

    Bars of synthetic (mini-LoveDA) runs are hatched, besides the † in their label.
    """
    table = scene_table(records)
    if table.empty:
        return _empty_figure("no runs to compare yet")
    hatches = ["//" if r["dataset"].get("synthetic") else "" for r in select_records(records)]
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(table) + 2), 4.5))
    for offset, (column, colour) in zip(
        (-0.2, 0.2), (("Urban mIoU", "tab:red"), ("Rural mIoU", "tab:green"))
    ):
        heights = table[column].to_numpy(dtype=float)
        bars = ax.bar(
            x + offset,
            np.nan_to_num(heights),
            0.4,
            label=column.split()[0],
            color=colour,
            hatch=hatches,
            edgecolor="white",
        )
        ax.bar_label(bars, labels=["-" if np.isnan(h) else f"{h:.1f}" for h in heights], fontsize=8)
    ax.set_xticks(x, list(table.index), rotation=20, ha="right")
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Urban vs rural mIoU")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_miou_vs_fps(records: Sequence[Record]) -> Figure:
    """mIoU (%) against inference speed (fps, log scale), one labelled point per model.

    Synthetic (mini-LoveDA) points are hollow grey squares, real LoveDA points filled circles.
    """
    chosen = [
        r
        for r in select_records(records, latest_only=True)
        if r.get("miou") is not None and r.get("fps")
    ]
    if not chosen:
        return _empty_figure("no runs with both mIoU and fps yet")
    labels = record_labels(chosen)
    fig, ax = plt.subplots(figsize=(7, 5))
    real: dict[str, Any] = {"marker": "o", "color": "tab:blue", "label": "LoveDA"}
    fake: dict[str, Any] = {"marker": "s", "facecolors": "none", "edgecolors": "grey"}
    fake["label"] = "mini-LoveDA (synthetic, not LoveDA)"
    for synthetic, style in ((False, real), (True, fake)):
        points = [
            (r["fps"], 100 * r["miou"])
            for r in chosen
            if bool(r["dataset"].get("synthetic")) == synthetic
        ]
        if points:
            fps, miou = zip(*points)
            ax.scatter(fps, miou, s=60, **style)
    for label, r in zip(labels, chosen):
        ax.annotate(
            label,
            (r["fps"], 100 * r["miou"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xscale("log")
    # Plain numbers on the log axis; minor ticks unlabelled (their labels collide).
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("inference speed (fps, log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mIoU vs speed")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def error_map(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """RGB map of a prediction against training labels: correct, wrong, ignored (ERROR_COLORS)."""
    colours = np.asarray(ERROR_COLORS, dtype=np.uint8)
    kind = np.where(target == IGNORE_INDEX, 2, np.where(prediction == target, 0, 1))
    return colours[kind]


def _tile_key(tile: Tile) -> tuple[str, str, str]:
    """``"Val/Urban/12.png"`` or ``("Val", "Urban", "12.png")`` -> the tuple."""
    parts = tuple(tile.replace("\\", "/").split("/")) if isinstance(tile, str) else tuple(tile)
    if len(parts) != 3:
        raise ValueError(f"tile {tile!r} must be 'Split/Scene/name.png' or (split, scene, name)")
    split, scene, name = parts
    return split, scene, name


def _train_labels(mask_path: Path) -> np.ndarray:
    """A raw LoveDA mask file as training labels."""
    return np.asarray(raw_to_train(read_png(mask_path, "mask")))


def _visual_tiles(run_dir: str | os.PathLike[str]) -> set[tuple[str, str, str]]:
    folder = Path(run_dir) / VISUALS_DIR
    return {(p.parent.parent.name, p.parent.name, p.name) for p in folder.glob("*/*/*.png")}


def plot_prediction_comparison(
    data_root: str | os.PathLike[str] | None,
    records: Sequence[Record],
    tiles: Sequence[Tile] | None = None,
    max_tiles: int = 4,
) -> Figure:
    """The same tiles for every model: image | ground truth | each model's prediction | each
    model's error map (green correct, red wrong, black ignored).

    Predictions come from each run's ``visuals/<Split>/<Scene>/<name>.png`` (raw 1..7), image
    and mask from ``data_root`` (None: the first record's data root that exists, else the
    default root). Only records evaluated on the same kind of data as ``data_root`` (synthetic
    or real) are compared; runs skipped (no visuals, other data) are named in the title.

    Args:
        tiles: ``"Split/Scene/name.png"`` strings or tuples; None: the tiles present in every
            compared run's visuals (sorted), the first ``max_tiles``.
    """
    chosen = select_records(records, latest_only=True)
    skipped = []
    with_visuals = []
    for label, r in zip(record_labels(chosen), chosen):
        if r.get("_run_dir") is not None and _visual_tiles(r["_run_dir"]):
            with_visuals.append((label, r))
        else:
            skipped.append(f"{label} (no visuals)")
    if not with_visuals:
        note = f"\n(skipped: {', '.join(skipped)})" if skipped else ""
        return _empty_figure("no run has segmentation visuals yet" + note)
    if data_root is None:
        roots = [Path(r["dataset"]["root"]) for _, r in with_visuals]
        root = next((p for p in roots if p.is_dir()), None) or resolve_data_root(None)
    else:
        root = resolve_data_root(Path(data_root))
    synthetic = is_synthetic(root)
    runs = []
    for label, r in with_visuals:
        if bool(r["dataset"].get("synthetic")) == synthetic:
            runs.append((label, r))
        else:
            skipped.append(f"{label} (other data)")
    note = f"skipped: {', '.join(skipped)}" if skipped else ""
    if tiles is None:
        common = (
            set.intersection(*(_visual_tiles(r["_run_dir"]) for _, r in runs)) if runs else set()
        )
        keys = sorted(common, key=lambda t: (t[0], t[1], len(t[2]), t[2]))[:max_tiles]
    else:
        keys = [_tile_key(t) for t in tiles]
    if not runs or not keys:
        return _empty_figure(
            "no segmentation visuals shared by the runs" + (f"\n{note}" if note else "")
        )

    rows = []
    for split, scene, name in keys:
        image_path = root / split / scene / "images_png" / name
        mask_path = root / split / scene / "masks_png" / name
        rows.append(
            TilePredictions(
                title=f"{split}/{scene}/{name}",
                image=read_png(image_path) if image_path.is_file() else None,
                target=_train_labels(mask_path) if mask_path.is_file() else None,
                predictions=[
                    read_prediction(Path(r["_run_dir"]) / VISUALS_DIR / split / scene / name)
                    for _, r in runs
                ],
            )
        )
    return plot_prediction_grid(
        rows, [label for label, _ in runs], "Predictions on the same tiles", note
    )


@dataclass
class TilePredictions:
    """One row of :func:`plot_prediction_grid`: a tile and each model's prediction of it.

    ``image``: RGB, ``[H, W, 3]`` or ``[3, H, W]`` (None: the file is missing); ``target``:
    training labels (None: no ground truth); ``predictions``: training labels per model, or
    why a model has none.
    """

    title: str
    image: np.ndarray | torch.Tensor | None
    target: np.ndarray | None
    predictions: list[np.ndarray | str]


def read_prediction(path: str | os.PathLike[str]) -> np.ndarray | str:
    """A saved prediction (raw LoveDA values, ``visuals/<Split>/<Scene>/<name>``) as training
    labels, or why it cannot be shown."""
    if not Path(path).is_file():
        return "missing"
    prediction = read_png(Path(path), "mask")
    if prediction.ndim != 2:  # visuals hold raw labels, not colour pictures
        return "not a label PNG"
    return np.asarray(raw_to_train(prediction))


def plot_prediction_grid(
    rows: list[TilePredictions], models: list[str], suptitle: str, note: str = ""
) -> Figure:
    """Image | ground truth | each model's prediction | each model's error map (green correct,
    red wrong, black ignored), one row per tile; the figure of the 03 and 04 notebooks."""
    from matplotlib.patches import Patch

    n_cols = 2 + 2 * len(models)
    fig, axs = plt.subplots(
        len(rows), n_cols, figsize=(2.6 * n_cols, 2.7 * len(rows) + 1), squeeze=False
    )
    for axes, row in zip(axs, rows):
        axes[0].set_title(
            row.title + ("" if row.image is not None else " (image missing)"), fontsize=8
        )
        if row.image is not None:
            axes[0].imshow(to_display_rgb(row.image))
        axes[1].set_title("ground truth", fontsize=8)
        if row.target is not None:
            axes[1].imshow(colorize(row.target))
        for i, (label, prediction) in enumerate(zip(models, row.predictions, strict=True)):
            pred_ax, err_ax = axes[2 + i], axes[2 + len(models) + i]
            pred_ax.set_title(label, fontsize=8)
            err_ax.set_title(f"errors: {label}", fontsize=8)
            if isinstance(prediction, str):
                pred_ax.text(0.5, 0.5, prediction, ha="center", va="center")
                continue
            pred_ax.imshow(colorize(prediction))
            if row.target is not None and row.target.shape == prediction.shape:
                err_ax.imshow(error_map(prediction, row.target))
        for ax in axes:
            ax.axis("off")
    errors = [
        Patch(facecolor=rgb_fraction(c), edgecolor="grey", label=n)
        for n, c in zip(("correct", "wrong", "ignored"), ERROR_COLORS)
    ]
    fig.legend(
        handles=legend_handles() + errors, loc="lower center", ncol=6, frameon=False, fontsize=8
    )
    fig.suptitle(suptitle + (f"\n({note})" if note else ""))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
