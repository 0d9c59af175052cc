"""Charts comparing models: per-class heatmap, urban vs rural, mIoU vs speed, paired differences.

Notebook 04 (results comparison) draws them from the results records
(:mod:`loveda_utils.results.table` selects and names the rows) and the published reference rows
(:mod:`loveda_utils.results.published`). Reference rows are always drawn apart from ours: below
a divider in the heatmap, with their own marker in the speed chart, and never ranked with ours.

Sizes are chosen for the rendered page (``04_results_comparison.html``, figures at 100 dpi in a
column about 1150 px wide): text at 9 pt or more, legends outside the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter
from numpy.typing import ArrayLike

from ..results.published import PUBLISHED_FPS_SIZE, fps_comparable
from ..results.references import PublishedResult
from ..results.schema import Record
from ..results.table import record_labels, scene_table, select_records

__all__ = [
    "log_ticks",
    "plot_miou_vs_fps",
    "plot_paired_differences",
    "plot_per_class_heatmap",
    "plot_scene_comparison",
]

#: Marker styles: our real LoveDA rows, our synthetic rows, published reference rows.
_OURS: dict[str, Any] = {"marker": "o", "color": "tab:blue", "label": "ours (LoveDA)"}
_SYNTHETIC: dict[str, Any] = {
    "marker": "s", "facecolors": "none", "edgecolors": "grey",
    "label": "ours, mini-LoveDA (synthetic, not LoveDA)",
}  # fmt: skip
_PUBLISHED_COLOUR = "tab:orange"
_PUBLISHED_MARKERS = ("D", "^", "v", "P", "X", "*", "h", "<", ">")


def _whiskers(
    ax: Axes,
    at: ArrayLike,
    low: ArrayLike,
    high: ArrayLike,
    colour: str,
    vertical: bool = True,
) -> None:
    """Intervals drawn from ``low`` to ``high`` with caps, whatever the point estimate (a
    percentile bootstrap interval need not hold it)."""
    lines, caps = (ax.vlines, "_") if vertical else (ax.hlines, "|")
    lines(at, low, high, colors=colour, linewidth=1.5, zorder=2)
    for ends in (low, high):
        xy = (at, ends) if vertical else (ends, at)
        ax.scatter(*xy, marker=caps, s=60, color=colour, linewidths=1.5, zorder=2)


def _empty_figure(message: str) -> Figure:
    """A one-axes figure saying why there is nothing to plot (a notebook never crashes on it)."""
    fig, ax = plt.subplots(figsize=(8, 1.5))
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11)
    ax.axis("off")
    return fig


# -- per-class heatmap ---------------------------------------------------------------------------


def _draw_heatmap(ax: Axes, values: np.ndarray) -> Any:
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(
            j, i, "-" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=10,
            color="black" if not np.isnan(v) and v > 60 else "white",
        )  # fmt: skip
    return image


def plot_per_class_heatmap(
    per_class_df: pd.DataFrame | None, published_df: pd.DataFrame | None = None
) -> Figure:
    """Heatmap of per-class IoU (%): models (rows) x classes (columns), each cell annotated.

    Args:
        per_class_df: our rows, :func:`loveda_utils.results.table.per_class_table`; its ``mIoU``
            column, when present, is set off from the classes by a white line.
        published_df: reference rows with per-class values
            (:func:`loveda_utils.results.published.published_per_class_table`), drawn below ours
            after a divider, labelled as reported with their split. Their columns must be ours.
    """
    ours = per_class_df if per_class_df is not None else pd.DataFrame()
    theirs = published_df if published_df is not None else pd.DataFrame()
    if ours.empty and theirs.empty:
        return _empty_figure("no runs to compare yet")
    columns = list(ours.columns if not ours.empty else theirs.columns)
    parts = [df.reindex(columns=columns) for df in (ours, theirs) if not df.empty]
    table = pd.concat(parts)
    values = table.to_numpy(dtype=float)
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(1.15 * cols + 5, 0.55 * rows + 2.2))
    image = _draw_heatmap(ax, values)
    ax.set_xticks(range(cols), [str(c) for c in columns], rotation=30, ha="right", fontsize=10)
    ax.set_yticks(range(rows), [str(i) for i in table.index], fontsize=10)
    if "mIoU" in columns:
        ax.axvline(columns.index("mIoU") - 0.5, color="white", linewidth=3)
    if not ours.empty and not theirs.empty:
        ax.axhline(len(ours) - 0.5, color="white", linewidth=4)
        for label in ax.get_yticklabels()[len(ours) :]:
            label.set_fontstyle("italic")
    title = "IoU per class (%)"
    if not theirs.empty:
        title += "; italic rows: published, as reported by their source (not run here)"
    ax.set_title(title, fontsize=11)
    fig.colorbar(image, ax=ax, label="IoU (%)")
    fig.tight_layout()
    return fig


# -- urban vs rural ------------------------------------------------------------------------------


def plot_scene_comparison(records: Sequence[Record]) -> Figure:
    """Urban vs rural mIoU (%) per model, as grouped bars (newest record per run group).

    Bars of synthetic (mini-LoveDA) runs are hatched, besides the † in their label. A record's
    ``per_scene_miou_ci`` (95% bootstrap interval over that scene's tiles) is drawn as a black
    whisker on its bar.
    """
    table = scene_table(records)
    if table.empty:
        return _empty_figure("no runs to compare yet")
    chosen = select_records(records)
    hatches = ["//" if r["dataset"].get("synthetic") else "" for r in chosen]
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.5 * len(table) + 3), 5))
    for offset, (column, colour) in zip(
        (-0.2, 0.2), (("Urban mIoU", "tab:red"), ("Rural mIoU", "tab:green"))
    ):
        scene = column.split()[0].lower()
        heights = table[column].to_numpy(dtype=float)
        bars = ax.bar(
            x + offset, np.nan_to_num(heights), 0.4, label=column.split()[0], color=colour,
            hatch=hatches, edgecolor="white",
        )  # fmt: skip
        labels = ["-" if np.isnan(h) else f"{h:.1f}" for h in heights]
        ax.bar_label(bars, labels=labels, fontsize=9, padding=6)
        intervals = [(r.get("per_scene_miou_ci") or {}).get(scene) for r in chosen]
        drawn = [(i, ci) for i, ci in enumerate(intervals) if ci and not np.isnan(heights[i])]
        if drawn:
            _whiskers(ax, [x[i] + offset for i, _ in drawn], [100 * ci[0] for _, ci in drawn],
                      [100 * ci[1] for _, ci in drawn], "black")  # fmt: skip
    ax.set_xticks(x, list(table.index), rotation=20, ha="right", fontsize=10)
    ax.set_ylabel("mIoU (%)", fontsize=10)
    ax.set_ylim(0, 105)
    ax.set_title("Urban vs rural mIoU", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=10)
    fig.tight_layout()
    return fig


# -- mIoU vs speed -------------------------------------------------------------------------------


def log_ticks(low: float, high: float) -> list[float]:
    """Tick values for a log axis spanning ``[low, high]`` (both > 0), at least two of them.

    Matplotlib's log axis labels powers of ten only, so a range inside one decade (6 to 9 fps)
    gets no label at all. Here: the 1-2-5 series, or 1..9 per decade when that leaves fewer than
    three ticks, or the ends themselves (rounded to two significant digits) when even that does.
    """
    if not 0 < low <= high:
        raise ValueError(f"log_ticks needs 0 < low <= high, got low={low!r}, high={high!r}")
    decades = range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 1)
    for steps in ((1, 2, 5), tuple(range(1, 10))):
        ticks = [s * 10.0**d for d in decades for s in steps]
        inside = [t for t in ticks if low <= t * (1 + 1e-9) and t <= high * (1 + 1e-9)]
        if len(inside) >= 3:
            return inside
    return sorted({float(f"{low:.2g}"), float(f"{high:.2g}")})


def _padded_log_limits(values: Sequence[float]) -> tuple[float, float]:
    """Axis limits around ``values`` with room for point labels (a fifth of the span each side,
    at least a factor 1.25)."""
    low, high = math.log10(min(values)), math.log10(max(values))
    pad = max((high - low) / 5, math.log10(1.25))
    return 10 ** (low - pad), 10 ** (high + pad)


#: Where a point's label may go (offset in points; the first free one wins), nearest first;
#: beyond :data:`_LEADER_FROM` a thin line ties the label to its point.
_LABEL_OFFSETS = (
    (6, 3), (6, -3), (-6, 3), (-6, -3), (6, 13), (-6, 13), (6, -13), (-6, -13),
    (14, 24), (-14, 24), (14, -24), (-14, -24), (24, 36), (-24, 36), (24, -36), (-24, -36),
)  # fmt: skip
_LEADER_FROM = 10


def _place_labels(ax: Axes, labels: Sequence[tuple[str, float, float, dict[str, Any]]]) -> None:
    """Label each point ``(text, x, y, style)`` beside it, where the label overlaps no other
    label, no point and stays inside the axes (the first such of :data:`_LABEL_OFFSETS`; when
    none is free, the one inside the axes covering the least). Call once the layout is final."""
    canvas = ax.figure.canvas
    canvas.draw()  # settles the limits and transforms the extents below are measured with
    renderer = canvas.get_renderer()  # type: ignore[attr-defined]
    frame = ax.get_window_extent(renderer)
    taken = []
    for _, x, y, _ in labels:  # the points themselves are obstacles
        px, py = ax.transData.transform((x, y))
        taken.append((px - 5, py - 5, px + 5, py + 5))

    def inside(box: Any) -> bool:
        return bool(frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
                    and box.y1 <= frame.y1)  # fmt: skip

    def overlap(box: Any) -> float:
        """Area ``box`` shares with the labels and points already placed."""
        return sum(
            max(0.0, min(box.x1, x1) - max(box.x0, x0))
            * max(0.0, min(box.y1, y1) - max(box.y0, y0))
            for x0, y0, x1, y1 in taken
        )

    for text, x, y, style in labels:
        candidates = []
        for dx, dy in _LABEL_OFFSETS:
            line = {"arrowstyle": "-", "color": style.get("color", "black"), "linewidth": 0.8}
            leader: dict[str, Any] = {"arrowprops": line} if abs(dy) >= _LEADER_FROM else {}
            note = ax.annotate(
                text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=9,
                ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top",
                **style, **leader,
            )  # fmt: skip
            box = note.get_window_extent(renderer)
            candidates.append((note, box))
            if inside(box) and not overlap(box):
                break
        # The first free place; else the place inside the axes that covers the least.
        ranked = sorted(candidates, key=lambda c: (not inside(c[1]), overlap(c[1])))
        kept = ranked[0]
        for note, _ in candidates:
            if note is not kept[0]:
                note.remove()
        taken.append((kept[1].x0, kept[1].y0, kept[1].x1, kept[1].y1))


def plot_miou_vs_fps(
    records: Sequence[Record], published: Sequence[PublishedResult] = ()
) -> Figure:
    """mIoU (%) against inference speed (fps, log scale), one labelled point per model.

    Our real LoveDA rows are filled circles (with their 95% bootstrap interval as a vertical bar
    when the record has ``miou_ci``), synthetic (mini-LoveDA) rows hollow grey squares.
    Published rows (``published``: :func:`loveda_utils.results.published.published_rows`) are
    orange, one marker per method, labelled by backbone, drawn only when their fps compare with
    ours
    (:func:`loveda_utils.results.published.fps_comparable`: a real row of ours timed on a CUDA
    GPU under the published protocol); otherwise a note under the axes says why they are left
    out. The legend sits below the axes, off the points.
    """
    ours = [
        r for r in select_records(records) if r.get("miou") is not None and r.get("fps")
    ]  # fmt: skip
    with_fps = [p for p in published if p.fps]
    comparable = [r for r in ours if not r["dataset"].get("synthetic") and fps_comparable(r)]
    # Published points only beside rows timed like them, and of the same split (Val vs Test).
    splits = {r["dataset"]["split"] for r in comparable}
    shown: list[tuple[PublishedResult, float]] = []  # each row with its fps
    for p in with_fps:
        if p.fps and p.split in splits:
            shown.append((p, p.fps))
    if not ours:
        return _empty_figure("no runs with both mIoU and fps yet")
    fig, ax = plt.subplots(figsize=(11, 7))
    labels = record_labels(ours)
    xs = [r["fps"] for r in ours] + [fps for _, fps in shown]
    lo, hi = _padded_log_limits(xs)
    for synthetic, style in ((False, _OURS), (True, _SYNTHETIC)):
        group = [r for r in ours if bool(r["dataset"].get("synthetic")) == synthetic]
        if not group:
            continue
        ax.scatter([r["fps"] for r in group], [100 * r["miou"] for r in group], s=70,
                   zorder=3, **style)  # fmt: skip
        with_ci = [r for r in group if r.get("miou_ci")]
        if with_ci:
            _whiskers(ax, [r["fps"] for r in with_ci], [100 * r["miou_ci"][0] for r in with_ci],
                      [100 * r["miou_ci"][1] for r in with_ci],
                      "grey" if synthetic else "tab:blue")  # fmt: skip
    to_label: list[tuple[str, float, float, dict[str, Any]]] = [
        (label, r["fps"], 100 * r["miou"], {}) for label, r in zip(labels, ours)
    ]
    # Published points: orange, one marker per method (in the legend), labelled by backbone.
    published_style: dict[str, Any] = {"color": _PUBLISHED_COLOUR, "fontstyle": "italic"}
    for method, marker in zip(dict.fromkeys(p.method for p, _ in shown), _PUBLISHED_MARKERS):
        same = [(p, fps) for p, fps in shown if p.method == method]
        ax.scatter([fps for _, fps in same], [100 * p.miou for p, _ in same], s=60, zorder=3,
                   marker=marker, color=_PUBLISHED_COLOUR,
                   label=f"{method}, published (reported, not run here)")  # fmt: skip
        to_label += [(p.backbone, fps, 100 * p.miou, published_style) for p, fps in same]
    ys = [100 * r["miou"] for r in ours] + [100 * p.miou for p, _ in shown]
    ys += [100 * v for r in ours for v in (r.get("miou_ci") or [])]
    room = max(max(ys) - min(ys), 1.0) * 0.08  # for the labels above the top point
    ax.set_ylim(min(ys) - room, max(ys) + room)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xticks(log_ticks(lo, hi))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(labelsize=10)
    ax.set_xlabel("inference speed (fps at batch 1, log scale)", fontsize=10)
    ax.set_ylabel("mIoU (%)", fontsize=10)
    ax.set_title("mIoU vs speed", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    note = ""
    if with_fps and not shown:
        devices = ", ".join(sorted({str(p.device) for p in with_fps}))
        published_splits = ", ".join(sorted({p.split for p in with_fps}))
        why = (
            f"none of ours timed like them is on {published_splits}" if comparable
            else "none of our LoveDA rows was timed like them on a CUDA GPU"
        )  # fmt: skip
        note = (
            f"{len(with_fps)} published rows not drawn: their fps (fp32, batch 1, "
            f"{PUBLISHED_FPS_SIZE} px tiles, {devices}) compare only with a LoveDA row of ours "
            f"timed the same way on a CUDA GPU and evaluated on the same split, and {why}."
        )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=10, frameon=False)
    if note:
        fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=9, wrap=True)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    _place_labels(ax, to_label)
    return fig


# -- paired differences --------------------------------------------------------------------------


def plot_paired_differences(differences: pd.DataFrame | None) -> Figure:
    """Each pair's mIoU difference with its 95% paired-bootstrap interval, largest first.

    ``differences``: :func:`loveda_utils.results.significance.paired_differences` (columns
    ``pair``, ``difference``, ``low``, ``high``, ``significant``, in percentage points). Pairs whose
    interval excludes 0 are drawn solid, the others hollow.
    """
    if differences is None or differences.empty:
        return _empty_figure("no two real runs evaluated on the same tiles yet")
    df = differences.iloc[::-1]  # largest difference on top
    y = np.arange(len(df))
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(df) + 2))
    diff = df["difference"].to_numpy(dtype=float)
    _whiskers(ax, y, df["low"].to_numpy(dtype=float), df["high"].to_numpy(dtype=float),
              "tab:blue", vertical=False)  # fmt: skip
    significant = df["significant"].to_numpy(dtype=bool)
    ax.scatter(diff[significant], y[significant], color="tab:blue", zorder=3,
               label="0 outside the interval")  # fmt: skip
    ax.scatter(diff[~significant], y[~significant], facecolors="white", edgecolors="tab:blue",
               zorder=3, label="0 inside the interval (not significant)")  # fmt: skip
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(y, list(df["pair"]), fontsize=10)
    ax.set_xlabel("mIoU difference (percentage points), 95% paired-bootstrap interval",
                  fontsize=10)  # fmt: skip
    ax.set_title("Differences between our runs on the same tiles", fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=10, frameon=False)
    fig.tight_layout()
    return fig
