"""Charts of notebook 04: heatmap (with published rows), urban vs rural, mIoU vs fps, paired
differences, all readable at the rendered size."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.figure import Figure
from record_factory import DEEPLAB, FCN, PSPNET, make_record, published_row, server_row

from loveda_utils.data.classes import CLASS_NAMES
from loveda_utils.results.published import published_per_class_table
from loveda_utils.results.significance import PAIR_COLUMNS
from loveda_utils.results.table import per_class_table
from loveda_utils.visuals.charts import (
    log_ticks,
    plot_miou_vs_fps,
    plot_paired_differences,
    plot_per_class_heatmap,
    plot_scene_comparison,
)

#: The fps of the four synthetic rows the README showed when the x axis had no labels.
README_FPS = (11.23, 18.23, 18.72, 56.59)
V100 = "Tesla V100-SXM2-32GB"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def visible_tick_labels(fig: Figure, axis: str = "x") -> list[str]:
    """The tick labels a reader sees on the first axes: drawn, non-empty, inside the limits."""
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = ax.xaxis.get_major_ticks() if axis == "x" else ax.yaxis.get_major_ticks()
    return [
        t.label1.get_text()
        for t in ticks
        if t.label1.get_visible() and t.label1.get_text() and low <= t.get_loc() <= high
    ]


def _synthetic_rows() -> list[dict]:
    return [
        make_record(m, miou, synthetic=True, crop_size=128, fps=fps, device="CPU x (2 threads)")
        for m, miou, fps in zip(
            (DEEPLAB, PSPNET, FCN, ("lraspp", "LRASPP", "MobileNetV3-L")),
            (0.43, 0.36, 0.33, 0.13), README_FPS,
        )
    ]  # fmt: skip


@pytest.mark.parametrize(
    "low, high", [(11.2, 56.6), (6.0, 9.6), (4.3, 26.9), (0.3, 0.35), (95, 2500)]
)
def test_log_ticks_label_every_range(low: float, high: float) -> None:
    ticks = log_ticks(low, high)
    assert len(ticks) >= 2
    assert all(low * 0.999 <= t <= high * 1.001 for t in ticks), ticks
    assert ticks == sorted(ticks)
    with pytest.raises(ValueError, match="0 < low <= high"):
        log_ticks(0, 1)


def test_miou_vs_fps_x_axis_has_labels() -> None:
    # The fps of the README's rows span less than one decade between 10 and 100: matplotlib's
    # log axis put its labels at 10 and 100, both outside the limits, so none showed.
    fig = plot_miou_vs_fps(_synthetic_rows())
    labels = visible_tick_labels(fig)
    assert len(labels) >= 2, labels
    assert all(float(text) > 0 for text in labels)
    assert fig.axes[0].get_xscale() == "log"
    assert len(visible_tick_labels(fig, "y")) >= 3
    # Every point is labelled inside the axes, and the legend sits below them.
    fig.canvas.draw()
    ax = fig.axes[0]
    frame = ax.get_window_extent()
    notes = [t for t in ax.texts if t.get_text()]
    assert len(notes) == len(README_FPS)
    for note in notes:
        box = note.get_window_extent()
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1, note.get_text()
    assert ax.get_legend().get_window_extent().y1 <= frame.y0


def test_miou_vs_fps_labels_do_not_overlap() -> None:
    rows = [make_record(m, 0.50 + i * 0.002, fps=6.0 + 0.2 * i, device=V100)
            for i, m in enumerate((DEEPLAB, PSPNET, FCN))]  # fmt: skip
    fig = plot_miou_vs_fps(rows)
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in fig.axes[0].texts]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)


def test_published_points_only_beside_rows_timed_like_them() -> None:
    published = [
        published_row(),
        published_row(method="PSPNet", backbone="R-101-D8", fps=4.58, miou=0.5186),
        server_row(),  # Test, no fps: never on this chart
    ]
    gpu = [make_record(fps=5.5, device=V100, amp=False, fps_size=1024)]
    fig = plot_miou_vs_fps(gpu, published)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "DeepLabV3+, published (reported, not run here)" in legend
    assert "PSPNet, published (reported, not run here)" in legend
    assert {t.get_text() for t in ax.texts} == {"DeepLabV3+ R-50", "R-50-D8", "R-101-D8"}
    assert not fig.texts  # no note: the published points are drawn

    # Ours timed on a CPU, in mixed precision, or at another size: the published fps stay off.
    for other in (
        {"device": "CPU AMD EPYC (2 threads)"}, {"amp": True}, {"fps_size": 512},
    ):  # fmt: skip
        fig = plot_miou_vs_fps([{**gpu[0], **other}], published)
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert not [t for t in legend if "published" in t], other
        assert "2 published rows not drawn" in fig.texts[0].get_text()
        assert "V100" in fig.texts[0].get_text()
    # Published Val rows never sit beside our rows of another split, nor beside synthetic ones.
    train = make_record(fps=5.5, device=V100, dataset={**gpu[0]["dataset"], "split": "Train"})
    for ours, why in (
        ([train], "none of ours timed like them is on Val"),
        ([make_record(fps=5.5, device=V100, synthetic=True)], "none of our LoveDA rows was timed"),
    ):
        fig = plot_miou_vs_fps(ours, published)
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert not [t for t in legend if "published" in t]
        assert why in fig.texts[0].get_text()


def test_miou_vs_fps_draws_intervals() -> None:
    row = make_record(fps=5.5, miou_ci=[0.50, 0.52])
    ax = plot_miou_vs_fps([row, make_record(PSPNET, 0.48, fps=4.0, miou_ci=None)]).axes[0]
    segments = [
        seg for c in ax.collections if hasattr(c, "get_segments") for seg in c.get_segments()
    ]
    assert [[tuple(p) for p in seg] for seg in segments] == [[(5.5, 50.0), (5.5, 52.0)]]


def test_per_class_heatmap_sets_published_rows_apart() -> None:
    ours = per_class_table([make_record(), make_record(PSPNET, 0.5186)])
    published = published_per_class_table([published_row(), server_row()])
    assert list(published.index) == ["PSPNet ResNet-50 (reported, Test)"]  # only per-class rows
    fig = plot_per_class_heatmap(ours, published)
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (3, len(CLASS_NAMES) + 1)
    labels = ax.get_yticklabels()
    assert [t.get_text() for t in labels][-1] == "PSPNet ResNet-50 (reported, Test)"
    assert [t.get_fontstyle() for t in labels] == ["normal", "normal", "italic"]
    assert [line.get_ydata()[0] for line in ax.lines if line.get_ydata()[0] == 1.5]  # divider
    assert "published" in ax.get_title()
    only_published = plot_per_class_heatmap(per_class_table([]), published)
    assert only_published.axes[0].images[0].get_array().shape == (1, len(CLASS_NAMES) + 1)


def test_scene_comparison_draws_scene_intervals() -> None:
    row = make_record(per_scene_miou_ci={"urban": [0.52, 0.54], "rural": None})
    fig = plot_scene_comparison([row, make_record(PSPNET, 0.5186, per_scene_miou_ci=None)])
    ax = fig.axes[0]
    assert len(ax.patches) == 4
    segments = [
        seg for c in ax.collections if hasattr(c, "get_segments") for seg in c.get_segments()
    ]
    assert len(segments) == 1 and [p[1] for p in segments[0]] == pytest.approx([52.0, 54.0])
    assert len(visible_tick_labels(fig)) == 2


def test_paired_differences_chart() -> None:
    df = pd.DataFrame(
        [["A vs B", "A", "B", 52.0, 50.0, 2.0, 0.5, 3.5, True, 10],
         ["A vs C", "A", "C", 52.0, 51.5, 0.5, -0.4, 1.3, False, 10]],
        columns=list(PAIR_COLUMNS),
    )  # fmt: skip
    ax = plot_paired_differences(df).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["A vs C", "A vs B"]  # largest on top
    filled, hollow = ax.collections[-2:]
    assert len(filled.get_offsets()) == 1 and len(hollow.get_offsets()) == 1
    assert len(visible_tick_labels(plot_paired_differences(df))) >= 3


def test_empty_charts_say_why() -> None:
    empty = pd.DataFrame(columns=list(PAIR_COLUMNS))
    for fig in (
        plot_per_class_heatmap(per_class_table([])), plot_scene_comparison([]),
        plot_miou_vs_fps([]), plot_paired_differences(empty),
    ):  # fmt: skip
        assert len(fig.axes) == 1 and fig.axes[0].texts
