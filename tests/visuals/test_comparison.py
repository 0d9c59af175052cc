"""Figures comparing models (notebook 04): heatmap, urban vs rural, mIoU vs fps, prediction grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from conftest import write_tree
from record_factory import write_runs_with_visuals

from loveda_utils.data.classes import CLASS_NAMES
from loveda_utils.results.store import load_records
from loveda_utils.results.table import SYNTHETIC_MARK, per_class_table
from loveda_utils.visuals.comparison import (
    plot_miou_vs_fps,
    plot_per_class_heatmap,
    plot_prediction_comparison,
    plot_scene_comparison,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "loveda", splits=("Val",), n=2, size=32)


@pytest.fixture
def records(tmp_path: Path, tree: Path) -> list[dict]:
    write_runs_with_visuals(tmp_path / "results", tree)
    return load_records(tmp_path / "results")[0]


def test_figures(records: list[dict]) -> None:
    fig = plot_per_class_heatmap(per_class_table(records))
    assert len(fig.axes) == 2 and len(fig.axes[0].images) == 1  # heatmap + colour bar
    assert fig.axes[0].images[0].get_array().shape == (4, len(CLASS_NAMES) + 1)
    fig = plot_scene_comparison(records)
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 2 * 4
    assert [p.get_hatch() or "" for p in fig.axes[0].patches].count("//") == 2  # synthetic
    fig = plot_miou_vs_fps(records)
    assert len(fig.axes) == 1 and len(fig.axes[0].collections) == 2  # real + synthetic
    assert fig.axes[0].get_xscale() == "log"
    # Nothing to compare yet: a figure that says so, never an exception in the notebook.
    for empty in (plot_per_class_heatmap(per_class_table([])), plot_scene_comparison([]),
                  plot_miou_vs_fps([])):  # fmt: skip
        assert len(empty.axes) == 1 and empty.axes[0].texts
    plt.close("all")


def test_prediction_comparison_figure(tree: Path, records: list[dict]) -> None:
    fig = plot_prediction_comparison(tree, records, max_tiles=3)
    # 3 tiles x (image, truth, 2 predictions, 2 error maps); FCN runs are skipped and named.
    assert len(fig.axes) == 3 * 6
    assert sum(len(ax.images) for ax in fig.axes) == 3 * 6
    title = fig._suptitle.get_text()
    assert "FCN R-50 (no visuals)" in title and f"FCN R-50 {SYNTHETIC_MARK} (other data)" in title
    # The error map shows the wrong rows in red and the no-data in black.
    error = fig.axes[4].images[0].get_array()
    assert (error[20:] == (214, 39, 40)).all(axis=-1).any()
    assert (error[:16] == (46, 160, 67)).all(axis=-1).any()
    one = plot_prediction_comparison(tree, records, tiles=["Val/Urban/0.png"])
    assert len(one.axes) == 6
    assert len(plot_prediction_comparison(tree, records[:0]).axes) == 1  # nothing to show
    with pytest.raises(ValueError, match="Split/Scene/name.png"):
        plot_prediction_comparison(tree, records, tiles=["Val/0.png"])
    plt.close("all")
