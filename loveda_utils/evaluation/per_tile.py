"""Per-tile confusion matrices: what a bootstrap over tiles needs, saved beside every record.

The split's confusion matrix (README, "The protocol") is a sum over tiles. Keeping each tile's
``[C, C]`` share (rows = ground truth, columns = prediction, no-data excluded) costs 49 int64
counts per tile and lets a reader resample tiles (:mod:`loveda_utils.evaluation.bootstrap`) or
pair two runs tile by tile, without predicting again.

- :class:`PerTileConfusion` is :func:`~loveda_utils.evaluation.loop.evaluate`'s counter: one
  ``torch.bincount`` per batch with the tile folded into the bin index (as
  :class:`~loveda_utils.evaluation.metrics.PerSceneConfusion` folds the scene), the overall and
  per-scene matrices then being sums of the tiles' counts. No extra pass over the pixels.
- :class:`TileConfusions` holds the result: tile names relative to the data root
  (``Val/Rural/2600.png``), their scenes and the ``[N, C, C]`` counts.
- :func:`save_per_tile` / :func:`load_per_tile` write and read :data:`PER_TILE_FILE`
  (``names``, ``scenes``, ``class_names``, ``confusion`` and, when ms+flip ran,
  ``confusion_ms_flip``), atomically.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..data.classes import CLASS_NAMES
from ..files import atomic_output
from .metrics import PerSceneConfusion, _confusion_counts, _scene_key

__all__ = [
    "PER_TILE_FILE",
    "PerTileConfusion",
    "PerTileFile",
    "TileConfusions",
    "load_per_tile",
    "save_per_tile",
    "tile_names",
]

#: The per-tile file in a run folder, beside ``metrics.json``.
PER_TILE_FILE = "per_tile_confusion.npz"
#: Keys of :data:`PER_TILE_FILE`.
_NAMES, _SCENES, _CLASSES, _CONFUSION, _CONFUSION_MS_FLIP = (
    "names",
    "scenes",
    "class_names",
    "confusion",
    "confusion_ms_flip",
)


def tile_names(
    splits: Sequence[Any] | None,
    scenes: Sequence[Any] | None,
    names: Sequence[Any] | None,
    first: int,
    n: int,
) -> list[str]:
    """The names of a batch's ``n`` tiles relative to the data root, ``<Split>/<Scene>/<file>``.

    A batch that does not say all three (a custom loader) names its tiles by their position in
    the evaluation, ``#<first + i>``: such names pair only with a run over the same loader.
    """
    if splits is None or scenes is None or names is None:
        return [f"#{first + i}" for i in range(n)]
    return [f"{splits[i]}/{scenes[i]}/{Path(str(names[i])).name}" for i in range(n)]


@dataclass(frozen=True, eq=False)
class TileConfusions:
    """The confusion matrix of every scored tile of one evaluation.

    Attributes:
        names: ``<Split>/<Scene>/<file name>`` per tile (see :func:`tile_names`), unique.
        scenes: the tile's scene key (lower-case, as ``EvaluationResult.per_scene``; ``""``
            when the batch named none).
        confusion: int64 ``[N, C, C]``, rows = ground truth, columns = prediction.
        class_names: one name per class.
    """

    names: tuple[str, ...]
    scenes: tuple[str, ...]
    confusion: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES

    def __post_init__(self) -> None:
        counts = self.confusion
        c = len(self.class_names)
        if not isinstance(counts, np.ndarray) or counts.dtype != np.int64:
            raise ValueError(
                f"confusion must be an int64 numpy array, got {type(counts).__name__} "
                f"{getattr(counts, 'dtype', '')}"
            )
        if counts.ndim != 3 or counts.shape[1:] != (c, c):
            raise ValueError(
                f"confusion must be [N, {c}, {c}] for {c} classes, got {tuple(counts.shape)}"
            )
        if not len(self.names) == len(self.scenes) == counts.shape[0]:
            raise ValueError(
                f"{len(self.names)} names and {len(self.scenes)} scenes for "
                f"{counts.shape[0]} confusion matrices; give one of each per tile"
            )
        if len(set(self.names)) != len(self.names):
            twice = sorted(n for n, k in Counter(self.names).items() if k > 1)
            raise ValueError(f"tile names must be unique; {len(twice)} repeat, e.g. {twice[:3]}")
        if counts.size and counts.min() < 0:
            raise ValueError("confusion holds negative counts; it is not a confusion matrix")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def total(self) -> np.ndarray:
        """The evaluation's ``[C, C]`` matrix: the sum over tiles."""
        return self.confusion.sum(axis=0)

    def select(self, keep: np.ndarray | Sequence[int]) -> TileConfusions:
        """The tiles at ``keep`` (indices or a boolean mask), in that order."""
        index = np.asarray(keep)
        index = np.flatnonzero(index) if index.dtype == bool else index.astype(np.intp)
        return TileConfusions(
            tuple(self.names[i] for i in index),
            tuple(self.scenes[i] for i in index),
            self.confusion[index],
            self.class_names,
        )

    def scene(self, key: str) -> TileConfusions:
        """The tiles of one scene (``"urban"``, ``"rural"``; case-insensitive)."""
        key = _scene_key(key)
        return self.select([i for i, s in enumerate(self.scenes) if s == key])

    @classmethod
    def empty(cls, class_names: Sequence[str] = CLASS_NAMES) -> TileConfusions:
        c = len(class_names)
        return cls((), (), np.zeros((0, c, c), dtype=np.int64), tuple(class_names))


class PerTileConfusion(PerSceneConfusion):
    """:class:`~loveda_utils.evaluation.metrics.PerSceneConfusion` that also keeps each tile's
    ``[C, C]`` counts, at the cost of one bincount per batch all the same.

    The bin index folds in the tile's position in the batch instead of its scene, so the one
    ``torch.bincount`` gives ``[B, C, C]``; the overall and per-scene matrices are sums of those
    (``B x C x C`` additions, nothing per pixel). Tile counts stay on the device until
    :meth:`tiles`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # those of ConfusionMatrix
        super().__init__(*args, **kwargs)
        self._tile_counts: list[torch.Tensor] = []
        self._tile_names: list[str] = []
        self._tile_scenes: list[str] = []

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        scenes: str | Sequence[str] | None,
        names: Sequence[str] | None = None,
    ) -> None:
        """Add a batch ``[B, H, W]`` (or one ``[H, W]`` tile). ``scenes`` as
        :meth:`PerSceneConfusion.update`; ``names`` gives each tile's name (see
        :func:`tile_names`), ``None`` names them by position."""
        if pred.ndim == 2:
            pred, target = pred.unsqueeze(0), target.unsqueeze(0)
        if pred.ndim != 3:
            raise ValueError(f"pred must be [B, H, W] or [H, W], got {tuple(pred.shape)}")
        b = pred.shape[0]
        keys = [""] * b if scenes is None else [_scene_key(s) for s in _per_tile(scenes, b)]
        if len(keys) != b:
            raise ValueError(f"scenes names {len(keys)} samples but the batch holds {b}")
        first = len(self._tile_names)
        batch_names = (
            [f"#{first + i}" for i in range(b)] if names is None else [str(n) for n in names]
        )
        if len(batch_names) != b:
            raise ValueError(f"names names {len(batch_names)} samples but the batch holds {b}")
        o = self.overall
        groups = torch.arange(b, dtype=torch.long)
        counts = _confusion_counts(
            pred, target, o.num_classes, o.ignore_index, groups, b, o.validate
        )  # [B, C, C]
        o._follow(counts.device)
        o._matrix += counts.sum(0)
        for key in dict.fromkeys(k for k in keys if k):
            members = [i for i, k in enumerate(keys) if k == key]
            matrix = self._scene_matrix(key)
            matrix._follow(counts.device)
            matrix._matrix += counts[members].sum(0)
        self._tile_counts.append(counts)
        self._tile_names += batch_names
        self._tile_scenes += keys

    def reset(self) -> None:
        """Zero the counts and forget the scenes and the tiles."""
        super().reset()
        self._tile_counts, self._tile_names, self._tile_scenes = [], [], []

    def merge(self, other: PerSceneConfusion) -> PerTileConfusion:
        """Add ``other``'s tiles (and so its totals) after this one's; returns ``self``."""
        if not isinstance(other, PerTileConfusion):
            raise TypeError(
                "a PerTileConfusion merges only another PerTileConfusion (a "
                f"{type(other).__name__} has no per-tile counts)"
            )
        super().merge(other)
        self._tile_counts += [c.to(self.overall.device) for c in other._tile_counts]
        self._tile_names += other._tile_names
        self._tile_scenes += other._tile_scenes
        return self

    def tiles(self) -> TileConfusions:
        """Every tile counted so far, in the order counted (CPU, numpy)."""
        names = self.overall.class_names
        if not self._tile_counts:
            return TileConfusions.empty(names)
        counts = torch.cat(self._tile_counts).cpu().numpy().astype(np.int64, copy=False)
        return TileConfusions(tuple(self._tile_names), tuple(self._tile_scenes), counts, names)


def _per_tile(scenes: str | Sequence[str], n: int) -> list[str]:
    return [scenes] * n if isinstance(scenes, str) else list(scenes)


class PerTileFile(NamedTuple):
    """What :func:`load_per_tile` reads: the single-scale tiles and, when run, ms+flip's."""

    single: TileConfusions
    ms_flip: TileConfusions | None


def save_per_tile(
    path: str | os.PathLike[str], tiles: TileConfusions, ms_flip: TileConfusions | None = None
) -> Path:
    """Write :data:`PER_TILE_FILE`'s format to ``path`` atomically (compressed npz).

    Raises:
        ValueError: if ``ms_flip`` covers other tiles (or another order) than ``tiles``.
    """
    arrays: dict[str, np.ndarray] = {
        _NAMES: np.asarray(tiles.names, dtype=str),
        _SCENES: np.asarray(tiles.scenes, dtype=str),
        _CLASSES: np.asarray(tiles.class_names, dtype=str),
        _CONFUSION: tiles.confusion,
    }
    if ms_flip is not None:
        if ms_flip.names != tiles.names or ms_flip.class_names != tiles.class_names:
            raise ValueError(
                "ms_flip's tiles differ from the single-scale ones; both evaluations must run "
                "over the same loader"
            )
        arrays[_CONFUSION_MS_FLIP] = ms_flip.confusion
    path = Path(path)
    with atomic_output(path) as handle:
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]
    return path


def load_per_tile(path: str | os.PathLike[str]) -> PerTileFile:
    """Read a file written by :func:`save_per_tile` (never unpickles).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not such a file (names the missing key or the bad shape).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable {PER_TILE_FILE} ({exc})") from exc
    missing = [k for k in (_NAMES, _SCENES, _CONFUSION) if k not in arrays]
    if missing:
        raise ValueError(f"{path} lacks {missing}; it was not written by save_per_tile")
    classes = tuple(str(c) for c in arrays.get(_CLASSES, CLASS_NAMES))
    names = tuple(str(n) for n in arrays[_NAMES])
    scenes = tuple(str(s) for s in arrays[_SCENES])
    try:
        single = TileConfusions(names, scenes, arrays[_CONFUSION], classes)
        ms = arrays.get(_CONFUSION_MS_FLIP)
        ms_flip = None if ms is None else TileConfusions(names, scenes, ms, classes)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return PerTileFile(single, ms_flip)
