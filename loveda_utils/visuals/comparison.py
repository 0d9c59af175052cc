"""The same tiles segmented by every model: prediction grids with error maps.

Notebook 04 (results comparison) draws :func:`plot_prediction_comparison` from the results
records (:mod:`loveda_utils.results.table` selects and names the rows); ``03_benchmark.ipynb``
draws one model's :func:`plot_prediction_grid`. Error maps are green where a prediction is
correct, red where it is wrong and black where the ground truth is no-data. The charts (heatmap,
urban vs rural, mIoU vs speed) are in :mod:`loveda_utils.visuals.charts`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from ..data.classes import IGNORE_INDEX, colorize, raw_to_train
from ..data.pngio import read_png
from ..data.root import resolve_data_root
from ..data.synthetic import is_synthetic
from ..results.schema import Record
from ..results.store import VISUALS_DIR
from ..results.table import record_labels, select_records
from .samples import legend_handles, rgb_fraction, to_display_rgb

#: A tile: ``"Split/Scene/name.png"`` or ``(split, scene, name)``.
Tile = str | tuple[str, str, str]

#: Error-map colours: correct, wrong, ignored (no-data in the ground truth).
ERROR_COLORS: tuple[tuple[int, int, int], ...] = ((46, 160, 67), (214, 39, 40), (0, 0, 0))


def _empty_figure(message: str) -> Figure:
    """A one-axes figure saying why there is nothing to plot (a notebook never crashes on it)."""
    fig, ax = plt.subplots(figsize=(8, 1.5))
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11)
    ax.axis("off")
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


#: Models side by side in one strip of :func:`plot_prediction_grid`, and the side of a panel
#: (inches at 100 dpi): four panels fill the rendered page's column, each about 300 px wide, so
#: roads and buildings of a 1024 px tile stay visible.
MODELS_PER_STRIP = 3
PANEL_INCHES = 3.1


def _show(ax: Any, picture: np.ndarray | None, title: str, missing: str = "") -> None:
    ax.set_title(title, fontsize=10)
    if picture is not None:
        ax.imshow(picture, interpolation="nearest")
    elif missing:
        ax.text(0.5, 0.5, missing, ha="center", va="center", fontsize=10)
    ax.axis("off")


def _panels(row: TilePredictions, models: Sequence[str], chunk: Sequence[int]) -> list[tuple]:
    """``(top, bottom)`` panels of one strip: the tile and its truth, then each model's
    prediction over its error map. A panel is ``(picture or None, title, why missing)``."""
    image = to_display_rgb(row.image) if row.image is not None else None
    truth = colorize(row.target) if row.target is not None else None
    pairs = [(
        (image, row.title, "image missing"),
        (truth, "ground truth", "no ground truth"),
    )]  # fmt: skip
    for i in chunk:
        prediction = row.predictions[i]
        if isinstance(prediction, str):
            pairs.append(((None, models[i], prediction), (None, f"errors: {models[i]}", "")))
            continue
        errors = None
        if row.target is not None and row.target.shape == prediction.shape:
            errors = error_map(prediction, row.target)
        pairs.append((
            (colorize(prediction), models[i], ""),
            (errors, f"errors: {models[i]}", "no ground truth"),
        ))  # fmt: skip
    return pairs


def plot_prediction_grid(
    rows: list[TilePredictions], models: list[str], suptitle: str, note: str = ""
) -> Figure:
    """Each tile, its ground truth, and every model's prediction over its error map (green
    correct, red wrong, black ignored); the figure of the 03 and 04 notebooks.

    One model: a row per tile (image | truth | prediction | errors). Several: a strip of two
    rows per tile, image over truth then each model's prediction over its errors, at most
    :data:`MODELS_PER_STRIP` models per strip (more models continue in the next strip, the
    tile repeated), so that every panel keeps a size at which roads and buildings show.
    """
    from matplotlib.patches import Patch

    chunks = [
        list(range(start, min(start + MODELS_PER_STRIP, len(models))))
        for start in range(0, max(len(models), 1), MODELS_PER_STRIP)
    ]
    strips = [(row, chunk) for row in rows for chunk in chunks]
    single = len(models) == 1
    n_cols = 4 if single else 1 + max(len(c) for c in chunks)
    n_rows = len(strips) * (1 if single else 2)
    legend_inches = 0.6
    height = PANEL_INCHES * 1.1 * n_rows + legend_inches + 0.8
    fig, axs = plt.subplots(n_rows, n_cols, figsize=(PANEL_INCHES * n_cols, height), squeeze=False)
    for s, (row, chunk) in enumerate(strips):
        pairs = _panels(row, models, chunk)
        if single:
            for ax, panel in zip(axs[s], [p for pair in pairs for p in pair]):
                _show(ax, *panel)
            continue
        top, bottom = axs[2 * s], axs[2 * s + 1]
        for col in range(n_cols):
            if col < len(pairs):
                _show(top[col], *pairs[col][0])
                _show(bottom[col], *pairs[col][1])
            else:
                top[col].axis("off")
                bottom[col].axis("off")
    errors = [
        Patch(facecolor=rgb_fraction(c), edgecolor="grey", label=n)
        for n, c in zip(("correct", "wrong", "ignored"), ERROR_COLORS)
    ]
    title = suptitle + (f"\n({note})" if note else "")
    # Title, then the key, then the first tile, placed in inches from the top (tight_layout
    # leaves the suptitle and a figure legend out).
    fig.suptitle(title, fontsize=12, y=1 - 0.1 / height, va="top")
    title_inches = 0.1 + 0.25 * (title.count("\n") + 1) + 0.05
    fig.legend(
        handles=legend_handles() + errors, loc="upper center", ncol=6, frameon=False,
        fontsize=10, bbox_to_anchor=(0.5, 1 - title_inches / height),
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 1 - (title_inches + legend_inches) / height))
    return fig
