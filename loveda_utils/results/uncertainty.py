"""The record's uncertainty: bootstrap intervals over tiles and the run folder's per-tile file.

Every evaluation keeps each tile's confusion matrix (``EvaluationResult.tiles``). A run saves them
as ``per_tile_confusion.npz`` (:func:`save_run_tiles`) and its record states 95% bootstrap
intervals of its mIoUs with the settings that drew them (:func:`uncertainty_fields`), so a
reader can tell a real difference between two rows from tile-sampling noise, and
``python -m loveda_utils compare`` can pair two runs tile by tile
(:mod:`loveda_utils.results.compare`).

The bootstrap seed is fixed (:data:`~loveda_utils.evaluation.bootstrap.BOOTSTRAP_SEED`), not the
run's training seed: the interval is then a function of the predictions alone, and evaluating
one checkpoint twice gives the same interval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.classes import SCENES
from ..evaluation.bootstrap import (
    DEFAULT_BOOTSTRAP,
    BootstrapSettings,
    bootstrap_miou_ci,
)
from ..evaluation.loop import EvaluationResult
from ..evaluation.per_tile import PER_TILE_FILE, TileConfusions, save_per_tile

__all__ = ["SCENE_KEYS", "save_run_tiles", "uncertainty_fields"]

#: The keys of the record's per-scene fields (``per_scene_miou``, ``per_scene_miou_ci``).
SCENE_KEYS: tuple[str, ...] = tuple(s.lower() for s in SCENES)


def _checked_tiles(result: EvaluationResult, which: str) -> TileConfusions:
    """``result.tiles``, after checking that they add up to ``result.confusion``."""
    tiles = result.tiles
    if not np.array_equal(tiles.total(), result.confusion.cpu().numpy()):
        raise ValueError(
            f"{which}.tiles do not sum to {which}.confusion ({len(tiles)} tiles); pass an "
            "EvaluationResult made by loveda_utils.evaluation.loop.evaluate"
        )
    return tiles


def _interval(tiles: TileConfusions, settings: BootstrapSettings) -> list[float] | None:
    """``[low, high]``, or None when no tile holds an evaluated pixel."""
    if not len(tiles) or int(tiles.confusion.sum()) == 0:
        return None
    low, high = bootstrap_miou_ci(tiles.confusion, settings)
    return [low, high]


def uncertainty_fields(
    single: EvaluationResult,
    ms_flip: EvaluationResult | None = None,
    settings: BootstrapSettings = DEFAULT_BOOTSTRAP,
) -> dict[str, Any]:
    """The record's bootstrap fields for a run's evaluations.

    Returns:
        ``miou_ci``: ``[low, high]`` of ``single``'s mIoU over its tiles (null when nothing
        was scored); ``miou_ms_flip_ci``: the same for ``ms_flip`` (null when not run);
        ``per_scene_miou_ci``: scene -> ``[low, high]`` over that scene's tiles (null for a
        scene not evaluated); ``bootstrap``: the settings
        (:meth:`~loveda_utils.evaluation.bootstrap.BootstrapSettings.to_dict`).

    Raises:
        ValueError: if a result's tiles do not add up to its confusion matrix.
    """
    tiles = _checked_tiles(single, "single")
    ms_tiles = None if ms_flip is None else _checked_tiles(ms_flip, "ms_flip")
    return {
        "miou_ci": _interval(tiles, settings),
        "miou_ms_flip_ci": None if ms_tiles is None else _interval(ms_tiles, settings),
        "per_scene_miou_ci": {key: _interval(tiles.scene(key), settings) for key in SCENE_KEYS},
        "bootstrap": settings.to_dict(),
    }


def save_run_tiles(
    run_dir: str | os.PathLike[str],
    single: EvaluationResult,
    ms_flip: EvaluationResult | None = None,
) -> Path:
    """Write ``<run_dir>/per_tile_confusion.npz`` (``confusion_ms_flip`` when ``ms_flip`` ran)."""
    tiles = _checked_tiles(single, "single")
    ms_tiles = None if ms_flip is None else _checked_tiles(ms_flip, "ms_flip")
    return save_per_tile(Path(run_dir) / PER_TILE_FILE, tiles, ms_tiles)
