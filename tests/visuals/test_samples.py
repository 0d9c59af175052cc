"""Figures of single samples (dataset inspection, notebook 01/02)."""

from __future__ import annotations

from pathlib import Path

from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.visuals.samples import plot_sample


def test_plot_sample(tiny_tree: Path) -> None:
    ds = LoveDASegmentation(tiny_tree, "val", "urban")
    sample = ds[0]
    fig = plot_sample(sample, prediction=sample["mask"])
    assert len(fig.axes) == 4
    assert "Val" in fig._suptitle.get_text()
