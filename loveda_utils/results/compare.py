"""Two runs over the same tiles, compared by a paired bootstrap (``python -m loveda_utils compare``).

Each run folder holds ``per_tile_confusion.npz`` (:mod:`loveda_utils.results.uncertainty`). The
runs are paired tile by tile, by name: both must have evaluated exactly the same tiles (same
split, scenes and ``limit_eval_images``), otherwise the difference would mix a model effect with
a change of test set, and the comparison is refused, naming the tiles that differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..evaluation.bootstrap import (
    DEFAULT_BOOTSTRAP,
    BootstrapSettings,
    PairedBootstrap,
    paired_bootstrap,
)
from ..evaluation.per_tile import PER_TILE_FILE, TileConfusions, load_per_tile

__all__ = ["RunComparison", "compare_runs", "format_comparison", "run_tiles"]

#: How many differing tile names an error message shows.
_SHOWN = 3


@dataclass(frozen=True)
class RunComparison:
    """Run B against run A: ``paired`` holds B - A over the tiles both evaluated."""

    run_a: Path
    run_b: Path
    ms_flip: bool
    paired: PairedBootstrap


def run_tiles(run_dir: str | os.PathLike[str], ms_flip: bool = False) -> TileConfusions:
    """A run folder's per-tile matrices (ms+flip's with ``ms_flip``).

    Raises:
        ConfigError: if the folder, its :data:`PER_TILE_FILE` or the ms+flip matrices are
            missing, or the file is damaged.
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ConfigError(f"run folder {folder} does not exist; pass a folder like results/runs/<run>")
    path = folder / PER_TILE_FILE
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: the run has no per-tile confusion matrices (it did not finish, "
            "or predates them); evaluate its checkpoint again to write them"
        )
    try:
        saved = load_per_tile(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not ms_flip:
        return saved.single
    if saved.ms_flip is None:
        raise ConfigError(f"{path} holds no ms+flip matrices (the run had ms_flip off); drop --ms-flip")
    return saved.ms_flip


def _examples(names: set[str]) -> str:
    shown = sorted(names)[:_SHOWN]
    return ", ".join(shown) + (", ..." if len(names) > _SHOWN else "")


def _aligned(a: TileConfusions, b: TileConfusions, run_a: Path, run_b: Path) -> TileConfusions:
    """``b`` in ``a``'s tile order; refuses runs whose tiles or classes differ."""
    if a.class_names != b.class_names:
        raise ConfigError(
            f"{run_a} scores classes {list(a.class_names)} but {run_b} {list(b.class_names)}; "
            "only runs over the same label set compare"
        )
    only_a, only_b = set(a.names) - set(b.names), set(b.names) - set(a.names)
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} only in {run_a} (e.g. {_examples(only_a)})")
        if only_b:
            parts.append(f"{len(only_b)} only in {run_b} (e.g. {_examples(only_b)})")
        raise ConfigError(
            f"the runs evaluated different tiles: {'; '.join(parts)}. A paired comparison needs "
            "the same tiles: evaluate both on the same split, scenes and limit_eval_images"
        )
    position = {name: i for i, name in enumerate(b.names)}
    return b.select([position[name] for name in a.names])


def compare_runs(
    run_a: str | os.PathLike[str],
    run_b: str | os.PathLike[str],
    *,
    ms_flip: bool = False,
    settings: BootstrapSettings = DEFAULT_BOOTSTRAP,
) -> RunComparison:
    """Paired bootstrap of run B minus run A over their tiles (paired by name), drawn as
    ``settings`` say.

    Raises:
        ConfigError: on a missing folder or file, runs over different tiles, or no scored pixel.
    """
    a_dir, b_dir = Path(run_a), Path(run_b)
    a, b = run_tiles(a_dir, ms_flip), run_tiles(b_dir, ms_flip)
    if not len(a):
        raise ConfigError(f"{a_dir / PER_TILE_FILE} holds no scored tile; nothing to compare")
    b = _aligned(a, b, a_dir, b_dir)
    try:
        paired = paired_bootstrap(a.confusion, b.confusion, a.class_names, settings)
    except ValueError as exc:
        raise ConfigError(f"{a_dir} vs {b_dir}: {exc}") from exc
    return RunComparison(a_dir, b_dir, ms_flip, paired)


def _points(value: float | None) -> str:
    """A fraction as signed percentage points, two decimals (the table's precision)."""
    return "n/a" if value is None else f"{100 * value:+.2f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "n/a" if ci is None else f"[{_points(ci[0])}, {_points(ci[1])}]"


def format_comparison(comparison: RunComparison) -> str:
    """The comparison as text: both mIoUs, B - A with its interval, then per class."""
    p, s = comparison.paired, comparison.paired.settings
    which = "ms+flip" if comparison.ms_flip else "single-scale"
    names = [c for c in p.per_class]
    width = max(len(n) for n in [*names, "mIoU"])
    lines = [
        f"{which} mIoU, B - A over the {p.n_tiles} tiles both runs evaluated (paired bootstrap "
        f"over tiles: {s.resamples} resamples, seed {s.seed}, {100 * s.level:g}% percentile "
        "interval; IoU in percentage points)",
        f"  A: {comparison.run_a}  mIoU {100 * p.miou_a:.2f}",
        f"  B: {comparison.run_b}  mIoU {100 * p.miou_b:.2f}",
        "",
        f"  {'mIoU':<{width}}  {_points(p.difference):>7}  {_ci(p.ci):<18}"
        + ("  0 outside the interval" if p.significant else ""),
    ]
    for name, diff in p.per_class.items():
        mark = "  0 outside the interval" if diff.significant else ""
        lines.append(f"  {name:<{width}}  {_points(diff.difference):>7}  {_ci(diff.ci):<18}{mark}")
    return "\n".join(line.rstrip() for line in lines)
