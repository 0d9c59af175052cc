"""Bootstrap intervals over tiles: how far an mIoU could move on another draw of tiles.

A split's mIoU comes from one confusion matrix summed over its tiles (README, "The protocol").
The tiles are the sampling unit: neighbouring pixels are not independent, tiles roughly are.
A resample draws ``N`` of the ``N`` tiles with replacement, sums their matrices and takes the
mIoU by MMSeg's rule (a class whose union is 0 in that resample is left out of the mean). The
interval is the percentile interval of those resampled mIoUs.

Resample ``r`` takes the tiles ``numpy.random.default_rng(seed).integers(0, N, (resamples, N))[r]``,
so an interval is reproducible from its settings alone. Two runs over the same tiles are
compared by a paired bootstrap (:func:`paired_bootstrap`): every resample draws the same tiles
for both, so the tile-to-tile variation they share cancels in the difference.

Vectorised: the draws become a ``[resamples, N]`` matrix of how often each tile was drawn, and
one matrix product with the tiles' per-class true positives, ground-truth and predicted areas
gives every resample's sums (exact: integer counts below 2**53 in float64).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.classes import CLASS_NAMES
from ..errors import ConfigError, check_int

__all__ = [
    "BOOTSTRAP_LEVEL",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "BootstrapSettings",
    "DEFAULT_BOOTSTRAP",
    "ClassDifference",
    "PairedBootstrap",
    "bootstrap_miou_ci",
    "bootstrap_mious",
    "paired_bootstrap",
]

#: Defaults of every interval the package reports (stated in each record's ``bootstrap``).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
BOOTSTRAP_LEVEL = 0.95

Interval = tuple[float, float]


@dataclass(frozen=True)
class BootstrapSettings:
    """How an interval is drawn: ``resamples`` draws of the tiles, ``seed``, coverage ``level``.

    Every function here, and each one above them that reports an interval, takes one of these
    (default :data:`DEFAULT_BOOTSTRAP`); bad values raise a :class:`~loveda_utils.errors.ConfigError`
    naming the setting.
    """

    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = BOOTSTRAP_SEED
    level: float = BOOTSTRAP_LEVEL

    def __post_init__(self) -> None:
        check_int("resamples", self.resamples)
        check_int("seed", self.seed, minimum=0)
        if not 0.0 < float(self.level) < 1.0:
            raise ConfigError(f"level must be in (0, 1), e.g. 0.95, got {self.level!r}")

    def to_dict(self) -> dict[str, Any]:
        """The record's ``bootstrap`` field."""
        return {
            "resamples": self.resamples,
            "seed": self.seed,
            "level": float(self.level),
            "unit": "tile",
            "interval": "percentile",
        }


#: The settings of every interval the package reports unless told otherwise.
DEFAULT_BOOTSTRAP = BootstrapSettings()


def _as_counts(confusion: Any, name: str = "confusion") -> np.ndarray:
    counts = np.asarray(confusion)
    if counts.ndim != 3 or counts.shape[1] != counts.shape[2]:
        raise ValueError(f"{name} must be per-tile matrices [N, C, C], got {counts.shape}")
    if counts.shape[0] == 0:
        raise ValueError(f"{name} holds no tiles; a bootstrap needs at least one scored tile")
    if not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"{name} must hold integer counts, got dtype {counts.dtype}")
    if counts.min() < 0:
        raise ValueError(f"{name} holds negative counts; it is not a confusion matrix")
    return counts


def _tile_stats(counts: np.ndarray) -> np.ndarray:
    """``[N, 3, C]`` float64: per tile and class, TP, ground-truth area, predicted area."""
    tp = np.diagonal(counts, axis1=1, axis2=2)
    return np.stack([tp, counts.sum(axis=2), counts.sum(axis=1)], axis=1).astype(np.float64)


def _iou(stats: np.ndarray) -> np.ndarray:
    """IoU per class from summed ``[..., 3, C]`` stats; NaN where the union is 0."""
    tp, label, pred = stats[..., 0, :], stats[..., 1, :], stats[..., 2, :]
    union = label + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the defined values (MMSeg's nanmean); NaN when none is."""
    defined = ~np.isnan(values)
    n = defined.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.where(defined, values, 0.0).sum(axis=-1) / n, np.nan)


def _draw_weights(n: int, settings: BootstrapSettings) -> np.ndarray:
    """``[resamples, n]`` float64: how often each tile is drawn in each resample."""
    rng = np.random.default_rng(settings.seed)
    draws = rng.integers(0, n, size=(settings.resamples, n))
    draws += np.arange(settings.resamples)[:, None] * n  # one bin range per resample
    counts = np.bincount(draws.ravel(), minlength=settings.resamples * n)
    return counts.reshape(settings.resamples, n).astype(np.float64)


def _resampled_ious(stats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[resamples, ..., C]`` IoU of every resample of ``[N, ..., 3, C]`` stats."""
    flat = stats.reshape(stats.shape[0], -1)
    summed = (weights @ flat).reshape((weights.shape[0], *stats.shape[1:]))
    return _iou(summed)


def _interval(samples: np.ndarray, level: float) -> np.ndarray:
    """Percentile interval along axis 0 (NaN samples left out); ``[2, ...]``."""
    alpha = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        # An all-NaN column (a class in no resample) is reported as None, not warned about.
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(samples, [alpha, 1.0 - alpha], axis=0)


def _pair(bounds: np.ndarray) -> Interval | None:
    low, high = float(bounds[0]), float(bounds[1])
    return None if np.isnan(low) or np.isnan(high) else (low, high)


def bootstrap_mious(
    confusion: np.ndarray, settings: BootstrapSettings = DEFAULT_BOOTSTRAP
) -> np.ndarray:
    """The mIoU of each of ``settings.resamples`` resamples of the tiles, ``[resamples]`` float64.

    Args:
        confusion: per-tile matrices ``[N, C, C]`` (rows = ground truth), integer counts.
        settings: the draws (its ``level`` is not used here).
    """
    counts = _as_counts(confusion)
    weights = _draw_weights(counts.shape[0], settings)
    return _nanmean(_resampled_ious(_tile_stats(counts), weights))


def bootstrap_miou_ci(
    confusion: np.ndarray, settings: BootstrapSettings = DEFAULT_BOOTSTRAP
) -> Interval:
    """A ``settings.level`` percentile bootstrap interval ``(low, high)`` of the mIoU over tiles.

    Args:
        confusion: per-tile matrices ``[N, C, C]`` (rows = ground truth), integer counts.
        settings: how the resamples are drawn.

    Raises:
        ValueError: on no tiles, or non-integer or negative counts.
    """
    samples = bootstrap_mious(confusion, settings)
    interval = _pair(_interval(samples, settings.level))
    if interval is None:  # every resample without a single evaluated pixel
        raise ValueError("confusion holds no evaluated pixel: the mIoU is undefined")
    return interval


@dataclass(frozen=True)
class ClassDifference:
    """One class's IoU in run B minus run A, with its interval (None where undefined)."""

    difference: float | None
    ci: Interval | None

    @property
    def significant(self) -> bool:
        """Whether 0 lies outside the interval."""
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)


@dataclass(frozen=True)
class PairedBootstrap:
    """mIoU of run B minus run A over the same tiles, with a paired bootstrap interval.

    Attributes:
        miou_a, miou_b: each run's mIoU over all its tiles (the records' ``miou``).
        difference: ``miou_b - miou_a``; ``ci`` its interval.
        per_class: class name -> :class:`ClassDifference` of the IoUs.
        n_tiles: tiles both runs evaluated; ``settings`` how the resamples were drawn.
    """

    miou_a: float
    miou_b: float
    difference: float
    ci: Interval
    per_class: dict[str, ClassDifference]
    n_tiles: int
    settings: BootstrapSettings = field(default_factory=BootstrapSettings)

    @property
    def significant(self) -> bool:
        """Whether 0 lies outside the mIoU difference's interval."""
        return self.ci[0] > 0 or self.ci[1] < 0


def paired_bootstrap(
    conf_a: np.ndarray,
    conf_b: np.ndarray,
    class_names: Sequence[str] = CLASS_NAMES,
    settings: BootstrapSettings = DEFAULT_BOOTSTRAP,
) -> PairedBootstrap:
    """Paired bootstrap of run B against run A: tile ``i`` of both is the same tile.

    Every resample draws the same tiles for both runs and takes the difference of their mIoUs
    (and of each class's IoU); the intervals are percentile intervals of those differences.

    Raises:
        ValueError: if the two hold different numbers of tiles or classes, or no tile.
    """
    a, b = _as_counts(conf_a, "conf_a"), _as_counts(conf_b, "conf_b")
    if a.shape != b.shape:
        raise ValueError(
            f"conf_a is {a.shape} but conf_b {b.shape}: a paired bootstrap needs the same "
            "tiles, in the same order, in both"
        )
    names = tuple(class_names)
    if len(names) != a.shape[1]:
        raise ValueError(f"class_names has {len(names)} names for {a.shape[1]} classes")
    stats = np.stack([_tile_stats(a), _tile_stats(b)], axis=1)  # [N, 2, 3, C]
    point_iou = _iou(stats.sum(axis=0))  # [2, C]
    point_miou = _nanmean(point_iou)
    if np.isnan(point_miou).any():
        raise ValueError("a run holds no evaluated pixel: its mIoU is undefined")
    ious = _resampled_ious(stats, _draw_weights(a.shape[0], settings))  # [R, 2, C]
    miou_diff = _nanmean(ious[:, 1]) - _nanmean(ious[:, 0])
    class_diff = ious[:, 1] - ious[:, 0]
    ci = _pair(_interval(miou_diff, settings.level))
    class_ci = _interval(class_diff, settings.level)  # [2, C]
    per_class = {}
    for c, name in enumerate(names):
        diff = float(point_iou[1, c] - point_iou[0, c])
        defined = not np.isnan(diff)
        per_class[name] = ClassDifference(
            diff if defined else None, _pair(class_ci[:, c]) if defined else None
        )
    return PairedBootstrap(
        miou_a=float(point_miou[0]),
        miou_b=float(point_miou[1]),
        difference=float(point_miou[1] - point_miou[0]),
        ci=ci if ci is not None else (float("nan"), float("nan")),
        per_class=per_class,
        n_tiles=int(a.shape[0]),
        settings=settings,
    )
