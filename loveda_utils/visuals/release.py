"""Figures of the LoveDA release's statistics (from the manifest) beside a tree's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..data.classes import CLASS_NAMES, IGNORE_COLOR, PALETTE

if TYPE_CHECKING:
    import pandas as pd


def plot_class_shares_beside_release(shares: pd.DataFrame, tree_label: str = "this tree") -> Figure:
    """One panel per split/scene: each class's share in the release (plain) and in the tree (hatched).

    ``shares``: the frame from :func:`loveda_utils.data.manifest.class_shares_beside_release`
    (no-data as a share of all pixels, classes as shares of the labelled pixels).
    """
    groups = list(dict.fromkeys(zip(shares.split, shares.scene)))
    names = ["no-data", *CLASS_NAMES]
    colours = [np.array(c) / 255 for c in (IGNORE_COLOR, *PALETTE)]
    panels = max(1, len(groups))
    fig, axs = plt.subplots(1, panels, figsize=(max(7.0, 4.5 * panels), 4.2), squeeze=False, sharey=True)
    x = np.arange(len(names))
    for ax, (split, scene) in zip(axs[0], groups):
        part = shares[(shares.split == split) & (shares.scene == scene)].set_index("class").reindex(names)
        for offset, column, hatch in ((-0.2, "release", ""), (0.2, "this tree", "//")):
            ax.bar(x + offset, 100 * part[column].to_numpy(dtype=float), 0.4, color=colours,
                   edgecolor="grey", hatch=hatch)
        ax.set_xticks(x, names, rotation=40, ha="right")
        ax.set_title(f"{split}/{scene}")
    axs[0][0].set_ylabel("%")
    fig.suptitle(f"LoveDA release (plain) vs {tree_label} (hatched)\n"
                 "no-data: % of all pixels; classes: % of the labelled pixels", fontsize=10)
    fig.tight_layout()
    return fig
