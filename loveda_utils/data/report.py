"""What ``check-data`` found: problems naming their files, counts per split/scene, release coverage.

:func:`~loveda_utils.data.validation.check_tree` fills a :class:`DataReport`; this module only
holds and renders it (the checks live in :mod:`~loveda_utils.data.validation`, the comparison
with the release in :mod:`~loveda_utils.data.manifest`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidDataError
from .classes import CLASS_NAMES, MAX_RAW_VALUE, NUM_CLASSES
from .synthetic import MARKER_NAME

if TYPE_CHECKING:
    import pandas as pd

#: Problems shown in an :class:`~loveda_utils.errors.InvalidDataError` (the report has them all).
_RAISED_PROBLEMS = 20


@dataclass
class Problem:
    """One thing wrong, tied to the file or folder it concerns."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class SceneSummary:
    """What one ``<Split>/<Scene>`` folder holds (the tiles the loader reads, nothing else)."""

    split: str
    scene: str
    n_images: int = 0
    n_masks: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)
    #: Pixels per raw mask value 0..7 (full check only).
    raw_counts: np.ndarray | None = None


@dataclass
class ReleaseCoverage:
    """How much of the LoveDA release a tree holds (``None`` counts when it is synthetic)."""

    #: Whether the tree is the generated mini-LoveDA (then nothing is compared).
    synthetic: bool
    #: Tiles of the whole release.
    release_tiles: int
    #: Per checked ``(split, scene)``: (tiles present in their own folder, tiles in the release).
    per_scene: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    #: Tiles compared, and how many of them differ from the release in any way.
    compared: int = 0
    differing: int = 0

    @property
    def present(self) -> int:
        return sum(found for found, _ in self.per_scene.values())

    def lines(self) -> list[str]:
        if self.synthetic:
            return [f"Release: this tree is the synthetic mini-LoveDA (marker {MARKER_NAME}), "
                    "not LoveDA; it is not compared with the LoveDA release manifest."]
        share = 100 * self.present / self.release_tiles if self.release_tiles else 0.0
        scenes = ", ".join(f"{split}/{scene} {found:,} of {total:,}"
                           for (split, scene), (found, total) in self.per_scene.items())
        lines = [f"Release: {self.present:,} of {self.release_tiles:,} tiles ({share:.1f}%), {scenes}"]
        if self.compared and self.differing == self.compared:
            lines.append(f"None of the {self.compared:,} tiles is as released: if this is not the "
                         "LoveDA release, check it with --no-manifest (check_tree(release=False)).")
        return lines


@dataclass
class DataReport:
    """The outcome of :func:`~loveda_utils.data.validation.check_tree`."""

    root: Path
    level: str
    problems: list[Problem]
    summaries: list[SceneSummary]
    #: Files in the tile folders that the loader ignores and that are not tiles (not problems).
    ignored: list[str] = field(default_factory=list)
    #: The comparison with the release manifest, when it ran.
    release: ReleaseCoverage | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """A readable report: problems first, each naming its file; then counts per split/scene."""
        lines = [f"LoveDA tree: {self.root}  (check: {self.level})"]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        if self.ignored:
            lines.append(f"{len(self.ignored)} file(s) the loader ignores (not tiles):")
            lines += [f"  - {p}" for p in self.ignored]
        lines.append("")
        lines.append(f"{'split':<6} {'scene':<6} {'images':>7} {'masks':>7}  tile size")
        for s in self.summaries:
            sizes = ", ".join(f"{w}x{h}" for w, h in sorted(s.sizes)) or "-"
            lines.append(f"{s.split:<6} {s.scene:<6} {s.n_images:>7} {s.n_masks:>7}  {sizes}")
        if self.release is not None:
            lines += ["", *self.release.lines()]
        if self.level == "full":
            lines += ["", *self._format_frequencies()]
        lines.append("")
        lines.append("OK: no problems found." if self.ok else f"FAILED: {len(self.problems)} problem(s).")
        return "\n".join(lines)

    def _format_frequencies(self) -> list[str]:
        rows = [s for s in self.summaries if s.raw_counts is not None and s.raw_counts.sum() > 0]
        if not rows:
            return []
        head = f"{'split':<6} {'scene':<6} {'no-data':>8} " + " ".join(f"{n[:11]:>11}" for n in CLASS_NAMES)
        lines = ["Pixel shares (%; classes of the labelled pixels):", head]
        for s in rows:
            assert s.raw_counts is not None
            counts = s.raw_counts.astype(np.float64)
            nodata = 100 * counts[0] / counts.sum()
            labelled = counts[1:].sum()
            shares = 100 * counts[1:] / labelled if labelled else np.zeros(NUM_CLASSES)
            lines.append(
                f"{s.split:<6} {s.scene:<6} {nodata:>8.2f} " + " ".join(f"{v:>11.2f}" for v in shares)
            )
        return lines

    def counts_frame(self) -> pd.DataFrame:
        """Images and masks per split/scene as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.DataFrame([
            {"split": s.split, "scene": s.scene, "images": s.n_images, "masks": s.n_masks,
             "tile size": ", ".join(f"{w}x{h}" for w, h in sorted(s.sizes))}
            for s in self.summaries
        ])

    def raise_for_problems(self) -> None:
        """Raise :class:`InvalidDataError` carrying every problem (named files) when not ok."""
        if self.ok:
            return
        shown = "\n".join(f"  - {p}" for p in self.problems[:_RAISED_PROBLEMS])
        more = len(self.problems) - _RAISED_PROBLEMS
        raise InvalidDataError(
            f"The LoveDA tree at {self.root} has {len(self.problems)} problem(s):\n{shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + f"\nRun `python -m loveda_utils check-data {self.root}` for the full report.",
            problems=[str(p) for p in self.problems],
        )


def frequency_rows(split: str, scene: str, counts: np.ndarray) -> list[dict]:
    """Tidy rows (one per raw value 0..7) for pixel counts of one split/scene.

    ``share`` is of all pixels, ``labelled_share`` of the labelled ones (NaN for no-data).
    """
    total, labelled = int(counts.sum()), int(counts[1:].sum())
    rows = []
    for raw, n in enumerate(counts[: MAX_RAW_VALUE + 1]):
        rows.append({
            "split": split, "scene": scene,
            "class": "no-data" if raw == 0 else CLASS_NAMES[raw - 1],
            "pixels": int(n),
            "share": n / total if total else 0.0,
            "labelled_share": (n / labelled if labelled else 0.0) if raw else float("nan"),
        })
    return rows


def class_frequencies(report: DataReport) -> pd.DataFrame:
    """Pixel counts per split/scene/class from a full report, as a tidy ``pandas.DataFrame``.

    Columns: ``split``, ``scene``, ``class`` (``"no-data"`` or a class name), ``pixels``, ``share``
    (of all pixels of that split/scene) and ``labelled_share`` (of the labelled pixels).
    """
    import pandas as pd

    if report.level != "full":
        raise ValueError("class_frequencies needs check_tree(..., level='full')")
    rows = [row for s in report.summaries if s.raw_counts is not None
            for row in frequency_rows(s.split, s.scene, s.raw_counts)]
    return pd.DataFrame(rows, columns=["split", "scene", "class", "pixels", "share", "labelled_share"])
