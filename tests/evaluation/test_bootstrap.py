"""Tests of loveda_utils.evaluation.bootstrap: intervals over tiles, single and paired."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loveda_utils.data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, raw_to_train
from loveda_utils.errors import ConfigError
from loveda_utils.evaluation.bootstrap import (
    BootstrapSettings,
    bootstrap_miou_ci,
    bootstrap_mious,
    paired_bootstrap,
)
from loveda_utils.evaluation.metrics import scores_from_confusion

C = NUM_CLASSES


def random_tiles(n: int, seed: int = 0, pixels: int = 400) -> np.ndarray:
    """``[n, C, C]`` int64 matrices of noisy predictions: mostly diagonal, some classes rare."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, C, C), dtype=np.int64)
    for i in range(n):
        truth = rng.choice(C, size=pixels, p=rng.dirichlet(np.ones(C) * 0.5))
        pred = np.where(rng.random(pixels) < 0.7, truth, rng.integers(0, C, pixels))
        np.add.at(out[i], (truth, pred), 1)
    return out


def loop_reference(
    confusion: np.ndarray, resamples: int, seed: int, level: float
) -> tuple[float, float]:
    """The bootstrap written plainly: draw tiles, sum their matrices, score, take quantiles."""
    n = confusion.shape[0]
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    mious = [scores_from_confusion(confusion[row].sum(axis=0)).miou for row in draws]
    alpha = (1 - level) / 2
    low, high = np.quantile(mious, [alpha, 1 - alpha])
    return float(low), float(high)


def loop_paired_reference(a: np.ndarray, b: np.ndarray, resamples: int, seed: int, level: float):
    n = a.shape[0]
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    diffs, per_class = [], []
    for row in draws:
        sa, sb = scores_from_confusion(a[row].sum(0)), scores_from_confusion(b[row].sum(0))
        diffs.append(sb.miou - sa.miou)
        per_class.append([
            np.nan if sa.per_class_iou[c] is None or sb.per_class_iou[c] is None
            else sb.per_class_iou[c] - sa.per_class_iou[c]
            for c in CLASS_NAMES
        ])
    alpha = (1 - level) / 2
    return (np.quantile(diffs, [alpha, 1 - alpha]),
            np.nanquantile(np.array(per_class), [alpha, 1 - alpha], axis=0))


def test_vectorised_bootstrap_equals_a_plain_loop() -> None:
    tiles = random_tiles(9)
    tiles[:, 4, :] = tiles[:, :, 4] = 0  # class 4 never present: left out of every mean
    tiles[3, 5, 5] = 50  # class 5 in one tile only: absent from many resamples
    tiles[[0, 1, 2, 4, 5, 6, 7, 8], 5, :] = 0
    tiles[[0, 1, 2, 4, 5, 6, 7, 8], :, 5] = 0
    for resamples, seed, level in ((200, 0, 0.95), (57, 3, 0.8)):
        got = bootstrap_miou_ci(tiles, BootstrapSettings(resamples, seed, level))
        assert got == pytest.approx(loop_reference(tiles, resamples, seed, level), abs=1e-12)


def test_vectorised_paired_bootstrap_equals_a_plain_loop() -> None:
    a, b = random_tiles(8, seed=1), random_tiles(8, seed=2)
    result = paired_bootstrap(a, b, settings=BootstrapSettings(150, 4))
    ci, per_class = loop_paired_reference(a, b, 150, 4, 0.95)
    assert result.ci == pytest.approx(tuple(ci), abs=1e-12)
    for c, name in enumerate(CLASS_NAMES):
        assert result.per_class[name].ci == pytest.approx(tuple(per_class[:, c]), abs=1e-12)
    sa, sb = scores_from_confusion(a.sum(0)), scores_from_confusion(b.sum(0))
    assert (result.miou_a, result.miou_b) == (sa.miou, sb.miou)
    assert result.difference == sb.miou - sa.miou
    assert result.per_class["road"].difference == pytest.approx(
        sb.per_class_iou["road"] - sa.per_class_iou["road"], abs=1e-15
    )
    assert result.n_tiles == 8 and result.settings == BootstrapSettings(150, 4, 0.95)


def test_deterministic_given_the_seed() -> None:
    tiles = random_tiles(30)
    first = bootstrap_miou_ci(tiles, BootstrapSettings(300, 7))
    assert bootstrap_miou_ci(tiles, BootstrapSettings(300, 7)) == first
    assert bootstrap_miou_ci(tiles, BootstrapSettings(300, 8)) != first
    assert np.array_equal(bootstrap_mious(tiles, BootstrapSettings(300, 7)), bootstrap_mious(tiles, BootstrapSettings(300, 7)))
    narrow = bootstrap_miou_ci(tiles, BootstrapSettings(300, 7, 0.5))
    assert first[0] < narrow[0] < narrow[1] < first[1]


def test_one_tile_has_no_spread() -> None:
    tiles = random_tiles(1)
    miou = scores_from_confusion(tiles[0]).miou
    assert bootstrap_miou_ci(tiles, BootstrapSettings(50)) == (miou, miou)


def test_identical_runs_differ_by_exactly_zero() -> None:
    tiles = random_tiles(40)
    result = paired_bootstrap(tiles, tiles.copy(), settings=BootstrapSettings(500))
    assert result.difference == 0.0 and result.ci == (0.0, 0.0)
    assert not result.significant
    for diff in result.per_class.values():
        assert diff.difference == 0.0 and diff.ci == (0.0, 0.0) and not diff.significant


def test_a_run_better_on_every_tile_is_significant() -> None:
    a = random_tiles(40, seed=5)
    b = a.copy()
    # On every tile, B gets right 5 pixels that A put in another class: each class's IoU in B
    # is at least A's on every resample, and the corrected class's is higher.
    for tile in b:
        wrong = [(t, p) for t in range(C) for p in range(C) if t != p and tile[t, p] >= 5]
        t, p = wrong[0]
        tile[t, p] -= 5
        tile[t, t] += 5
    result = paired_bootstrap(a, b, settings=BootstrapSettings(500))
    assert result.difference > 0 and result.ci[0] > 0 and result.significant
    assert all(d.ci is None or d.ci[0] >= 0 for d in result.per_class.values())
    worse = paired_bootstrap(b, a, settings=BootstrapSettings(500))  # the other way round: B - A < 0
    assert worse.ci[1] < 0 and worse.significant
    assert worse.difference == pytest.approx(-result.difference, abs=1e-15)


@pytest.fixture
def real_tiles(real_sample: Path) -> np.ndarray:
    """Per-tile matrices of the real sample's masks against the masks shifted by 24 px (a
    prediction with realistic errors along every boundary)."""
    out = []
    for path in sorted((real_sample / "Train" / "Rural" / "masks_png").glob("*.png")):
        truth = raw_to_train(np.array(Image.open(path))).astype(np.int64)
        pred = np.roll(truth, 24, axis=1)
        keep = (truth != IGNORE_INDEX) & (pred != IGNORE_INDEX)
        counts = np.bincount(truth[keep] * C + pred[keep], minlength=C * C)
        out.append(counts.reshape(C, C))
    return np.stack(out)


def test_interval_contains_the_estimate_on_real_tiles(real_tiles: np.ndarray) -> None:
    assert real_tiles.shape[0] == 16
    miou = scores_from_confusion(real_tiles.sum(0)).miou
    low, high = bootstrap_miou_ci(real_tiles)
    assert low < miou < high
    assert 0.0 <= low and high <= 1.0


def test_paired_bootstrap_refuses_mismatched_input() -> None:
    a = random_tiles(5)
    with pytest.raises(ValueError, match="same tiles"):
        paired_bootstrap(a, a[:4])
    with pytest.raises(ValueError, match="class_names has 2 names"):
        paired_bootstrap(a, a, class_names=("x", "y"))
    with pytest.raises(ValueError, match="no evaluated pixel"):
        paired_bootstrap(np.zeros_like(a), a)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="holds no tiles"):
        bootstrap_miou_ci(np.zeros((0, C, C), dtype=np.int64))
    with pytest.raises(ValueError, match="integer counts"):
        bootstrap_miou_ci(random_tiles(3).astype(float))
    with pytest.raises(ValueError, match=r"\[N, C, C\]"):
        bootstrap_miou_ci(random_tiles(3)[0])
    with pytest.raises(ValueError, match="no evaluated pixel"):
        bootstrap_miou_ci(np.zeros((3, C, C), dtype=np.int64))
    with pytest.raises(ConfigError, match="level must be in"):
        BootstrapSettings(level=95)
    with pytest.raises(ConfigError, match="resamples=0: must be a positive integer"):
        BootstrapSettings(resamples=0)
    with pytest.raises(ConfigError, match="seed=-1: must be an integer >= 0"):
        BootstrapSettings(seed=-1)


def test_settings_as_recorded() -> None:
    assert BootstrapSettings().to_dict() == {
        "resamples": 2000, "seed": 0, "level": 0.95, "unit": "tile", "interval": "percentile",
    }
