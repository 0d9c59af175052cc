"""The same tiles segmented by every model (notebooks 03 and 04): the prediction grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import write_tree
from record_factory import write_runs_with_visuals

from loveda_utils.results.store import load_records
from loveda_utils.results.table import SYNTHETIC_MARK
from loveda_utils.visuals.comparison import (
    MODELS_PER_STRIP,
    PANEL_INCHES,
    TilePredictions,
    plot_prediction_comparison,
    plot_prediction_grid,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "loveda", splits=("Val",), n=2, size=32)


@pytest.fixture
def records(tmp_path: Path, tree: Path) -> list[dict]:
    write_runs_with_visuals(tmp_path / "results", tree)
    return load_records(tmp_path / "results")[0]


def test_prediction_comparison_figure(tree: Path, records: list[dict]) -> None:
    fig = plot_prediction_comparison(tree, records, max_tiles=3)
    # 3 tiles, each a strip of 2 rows x 3 columns: image over truth, then each model's
    # prediction over its error map; FCN runs are skipped and named.
    assert len(fig.axes) == 3 * 6
    assert sum(len(ax.images) for ax in fig.axes) == 3 * 6
    columns = 3
    top, bottom = fig.axes[:columns], fig.axes[columns : 2 * columns]
    # Models in table order (mIoU descending).
    assert [ax.get_title() for ax in top] == ["Val/Rural/2.png", "PSPNet R-101", "DeepLabV3+ R-50"]
    assert [ax.get_title() for ax in bottom] == [
        "ground truth", "errors: PSPNet R-101", "errors: DeepLabV3+ R-50",
    ]  # fmt: skip
    title = fig._suptitle.get_text()
    assert "FCN R-50 (no visuals)" in title and f"FCN R-50 {SYNTHETIC_MARK} (other data)" in title
    # The error map shows the wrong rows in red and the no-data in black.
    error = bottom[1].images[0].get_array()
    assert (error[20:] == (214, 39, 40)).all(axis=-1).any()
    assert (error[:16] == (46, 160, 67)).all(axis=-1).any()
    one = plot_prediction_comparison(tree, records, tiles=["Val/Urban/0.png"])
    assert len(one.axes) == 6
    assert len(plot_prediction_comparison(tree, records[:0]).axes) == 1  # nothing to show
    with pytest.raises(ValueError, match="Split/Scene/name.png"):
        plot_prediction_comparison(tree, records, tiles=["Val/0.png"])
    plt.close("all")


def _tile(size: int = 16, models: int = 1) -> TilePredictions:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, (size, size)).astype(np.uint8)
    image = rng.integers(0, 255, (size, size, 3)).astype(np.uint8)
    return TilePredictions("Val/Urban/1.png", image, labels, [labels.copy() for _ in range(models)])


def test_prediction_grid_of_one_model_is_one_row_per_tile() -> None:
    # Notebook 03: one model, image | truth | prediction | errors.
    fig = plot_prediction_grid([_tile(), _tile()], ["UNet R-18"], "one model")
    assert len(fig.axes) == 2 * 4
    assert [ax.get_title() for ax in fig.axes[:4]] == [
        "Val/Urban/1.png", "ground truth", "UNet R-18", "errors: UNet R-18",
    ]  # fmt: skip
    plt.close("all")


def test_prediction_grid_wraps_models_so_panels_stay_large() -> None:
    models = [f"model {i}" for i in range(MODELS_PER_STRIP + 1)]
    fig = plot_prediction_grid([_tile(models=len(models))], models, "four models")
    # Two strips for the one tile (the tile repeated), each two rows of 1 + MODELS_PER_STRIP.
    columns = 1 + MODELS_PER_STRIP
    assert len(fig.axes) == 2 * 2 * columns
    titles = [ax.get_title() for ax in fig.axes]
    assert titles.count("Val/Urban/1.png") == 2 and titles.count("model 3") == 1
    assert sum(len(ax.images) for ax in fig.axes) == 2 * 2 + 2 * len(models)
    # Every picture is drawn at least ~290 px wide at the page's 100 dpi.
    width, _ = fig.get_size_inches()
    assert width / columns >= PANEL_INCHES * 0.99 and PANEL_INCHES * 100 >= 290
    # A missing prediction is said, not drawn.
    tile = _tile(models=2)
    tile.predictions[1] = "missing"
    fig = plot_prediction_grid([tile], ["a", "b"], "one missing")
    assert "missing" in [t.get_text() for ax in fig.axes for t in ax.texts]
    plt.close("all")
