"""Figures: palette overlays, sample plots, model comparisons and error maps.

Colours come from :mod:`loveda_utils.data.classes` (MMSeg's LoveDA palette), so every figure in the
workbook agrees with MMSeg's visuals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from ..data.classes import IGNORE_INDEX, colorize
from ..data.pngio import read_png

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


def legend_handles() -> list:
    """Legend patches for the palette (one per class, plus no-data)."""
    from matplotlib.patches import Patch

    from ..data.classes import CLASS_NAMES, IGNORE_COLOR, PALETTE

    handles = [Patch(facecolor=np.array(c) / 255, edgecolor="grey", label=n) for n, c in zip(CLASS_NAMES, PALETTE)]
    handles.append(Patch(facecolor=np.array(IGNORE_COLOR) / 255, edgecolor="grey", label="no-data"))
    return handles


def plot_class_frequencies(frequencies, split: str | None = None) -> Figure:
    """Bar chart of class shares of the labelled pixels, urban vs rural, plus the no-data share.

    ``frequencies``: the frame from :func:`loveda_utils.data.validation.class_frequencies`.
    """
    from ..data.classes import CLASS_NAMES, PALETTE

    df = frequencies if split is None else frequencies[frequencies.split == split]
    labelled = df[df["class"] != "no-data"].groupby(["class", "scene"])["pixels"].sum().unstack("scene")
    labelled = labelled.reindex(list(CLASS_NAMES)).fillna(0)
    shares = labelled / labelled.sum(axis=0).replace(0, np.nan)
    nodata = df[df["class"] == "no-data"].groupby("scene")["pixels"].sum() / df.groupby("scene")["pixels"].sum()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [4, 1]})
    scenes = list(shares.columns)
    width = 0.8 / max(1, len(scenes))
    x = np.arange(len(CLASS_NAMES))
    for i, scene in enumerate(scenes):
        ax.bar(x + i * width, 100 * shares[scene].to_numpy(), width, label=scene,
               color=[np.array(c) / 255 for c in PALETTE], edgecolor="black", hatch="" if i == 0 else "//")
    ax.set_xticks(x + width * (len(scenes) - 1) / 2, CLASS_NAMES, rotation=30)
    ax.set_ylabel("% of labelled pixels")
    ax.set_title("Class frequencies" + (f" ({split})" if split else "") + " - plain: " + scenes[0]
                 + ("" if len(scenes) < 2 else f", hatched: {scenes[1]}"))
    ax2.bar(nodata.index, 100 * nodata.to_numpy(), color="black")
    ax2.set_title("no-data share (%)")
    fig.tight_layout()
    return fig


def plot_samples(dataset, indices: list[int], alpha: float = 0.5) -> Figure:
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


def plot_pipeline_draws(sample: Sample, pipeline, draws: int = 4, seed: int = 0, alpha: float = 0.5) -> Figure:
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
        axs[r][0].text(-0.08, 0.5, name, transform=axs[r][0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    return fig


# -- results comparison (notebook 04) ------------------------------------------------------------

#: Error-map colours: correct, wrong, ignored (no-data in the ground truth).
ERROR_COLORS: tuple[tuple[int, int, int], ...] = ((46, 160, 67), (214, 39, 40), (0, 0, 0))


def _empty_figure(message: str) -> Figure:
    """A one-axes figure saying why there is nothing to plot (a notebook never crashes on it)."""
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    ax.axis("off")
    return fig


def plot_per_class_heatmap(per_class_df) -> Figure:
    """Heatmap of per-class IoU (%): models (rows) x classes (columns), each cell annotated.

    ``per_class_df``: :func:`loveda_utils.results.records.per_class_table`; its ``mIoU`` column, when
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


def plot_scene_comparison(records) -> Figure:
    """Urban vs rural mIoU (%) per model, as grouped bars (newest record per run group).

    Bars of synthetic (mini-LoveDA) runs are hatched, besides the † in their label.
    """
    from ..results.records import scene_table, select_records

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


def plot_miou_vs_fps(records) -> Figure:
    """mIoU (%) against inference speed (fps, log scale), one labelled point per model.

    Synthetic (mini-LoveDA) points are hollow grey squares, real LoveDA points filled circles.
    """
    from ..results.records import record_labels, select_records

    chosen = [
        r
        for r in select_records(records, latest_only=True)
        if r.get("miou") is not None and r.get("fps")
    ]
    if not chosen:
        return _empty_figure("no runs with both mIoU and fps yet")
    labels = record_labels(chosen)
    fig, ax = plt.subplots(figsize=(7, 5))
    real = {"marker": "o", "color": "tab:blue", "label": "LoveDA"}
    fake = {"marker": "s", "facecolors": "none", "edgecolors": "grey"}
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


def _tile_key(tile) -> tuple[str, str, str]:
    """``"Val/Urban/12.png"`` or ``("Val", "Urban", "12.png")`` -> the tuple."""
    parts = tuple(tile.replace("\\", "/").split("/")) if isinstance(tile, str) else tuple(tile)
    if len(parts) != 3:
        raise ValueError(f"tile {tile!r} must be 'Split/Scene/name.png' or (split, scene, name)")
    return parts


def _visual_tiles(run_dir) -> set[tuple[str, str, str]]:
    from pathlib import Path

    folder = Path(run_dir) / "visuals"
    return {(p.parent.parent.name, p.parent.name, p.name) for p in folder.glob("*/*/*.png")}


def plot_prediction_comparison(data_root, records, tiles=None, max_tiles: int = 4) -> Figure:
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
    from pathlib import Path

    from ..data.classes import raw_to_train
    from ..data.root import resolve_data_root
    from ..data.synthetic import is_synthetic
    from ..results.records import record_labels, select_records

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
        root = resolve_data_root(data_root)
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
                target=raw_to_train(read_png(mask_path, "mask")) if mask_path.is_file() else None,
                predictions=[
                    read_prediction(Path(r["_run_dir"]) / "visuals" / split / scene / name)
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


def read_prediction(path) -> np.ndarray | str:
    """A saved prediction (raw LoveDA values, ``visuals/<Split>/<Scene>/<name>``) as training
    labels, or why it cannot be shown."""
    from pathlib import Path

    from ..data.classes import raw_to_train

    if not Path(path).is_file():
        return "missing"
    prediction = read_png(path, "mask")
    if prediction.ndim != 2:  # visuals hold raw labels, not colour pictures
        return "not a label PNG"
    return raw_to_train(prediction)


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
        axes[0].set_title(row.title + ("" if row.image is not None else " (image missing)"),
                          fontsize=8)
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
        Patch(facecolor=np.array(c) / 255, edgecolor="grey", label=n)
        for n, c in zip(("correct", "wrong", "ignored"), ERROR_COLORS)
    ]
    fig.legend(
        handles=legend_handles() + errors, loc="lower center", ncol=6, frameon=False, fontsize=8
    )
    fig.suptitle(suptitle + (f"\n({note})" if note else ""))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
