"""Validate a LoveDA tree before anything trains on it (``python -m loveda_utils check-data ROOT``).

Two depths:

* ``quick``: folders, image/mask pairing, PNG headers (mode and size). Reads a few bytes per
  file; the DataModule runs it up front so bad data fails before any worker starts.
* ``full``: also decodes every PNG (truncated or corrupt files), checks mask values are in 0..7,
  and counts pixels per raw value, which gives the class frequencies and no-data share for free.

Every problem names its file. :class:`DataReport` renders the readable report.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetNotFoundError, InvalidDataError
from .classes import (
    CLASS_NAMES,
    NUM_CLASSES,
    SCENES,
    SPLITS,
    SPLITS_WITH_MASKS,
    normalize_scenes,
    normalize_split,
)
from .pngio import unreadable_message

IMAGES_DIR = "images_png"
MASKS_DIR = "masks_png"
#: Highest raw mask value allowed on disk (7 = agriculture).
MAX_RAW_VALUE = NUM_CLASSES
_SINGLE_BAND_MODES = {"L", "P", "I", "I;16", "I;16B", "I;16L"}


@dataclass
class Problem:
    """One thing wrong, tied to the file or folder it concerns."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class SceneSummary:
    """What one ``<Split>/<Scene>`` folder holds."""

    split: str
    scene: str
    n_images: int = 0
    n_masks: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)
    #: Pixels per raw mask value 0..7 (full check only).
    raw_counts: np.ndarray | None = None


@dataclass
class DataReport:
    """The outcome of :func:`check_tree`."""

    root: Path
    level: str
    problems: list[Problem]
    summaries: list[SceneSummary]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """A readable report: problems first, each naming its file; then counts per split/scene."""
        lines = [f"LoveDA tree: {self.root}  (check: {self.level})"]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        lines.append("")
        lines.append(f"{'split':<6} {'scene':<6} {'images':>7} {'masks':>7}  tile size")
        for s in self.summaries:
            sizes = ", ".join(f"{w}x{h}" for w, h in sorted(s.sizes)) or "-"
            lines.append(f"{s.split:<6} {s.scene:<6} {s.n_images:>7} {s.n_masks:>7}  {sizes}")
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
            counts = s.raw_counts.astype(np.float64)
            nodata = 100 * counts[0] / counts.sum()
            labelled = counts[1:].sum()
            shares = 100 * counts[1:] / labelled if labelled else np.zeros(NUM_CLASSES)
            lines.append(
                f"{s.split:<6} {s.scene:<6} {nodata:>8.2f} " + " ".join(f"{v:>11.2f}" for v in shares)
            )
        return lines

    def counts_frame(self):
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
        shown = "\n".join(f"  - {p}" for p in self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        raise InvalidDataError(
            f"The LoveDA tree at {self.root} has {len(self.problems)} problem(s):\n{shown}{more}\n"
            f"Run `python -m loveda_utils check-data {self.root}` for the full report.",
            problems=[str(p) for p in self.problems],
        )


# -- per-file checks (module level so that worker processes can run them) ----------------------


def _inspect_png(path: str, kind: str, full: bool) -> tuple[list[str], tuple[int, int] | None, np.ndarray | None]:
    """Check one file. Returns (problem messages, (width, height), raw value counts for masks)."""
    try:
        with Image.open(path) as img:
            size, mode, fmt = img.size, img.mode, img.format
            if fmt != "PNG":
                return [f"not a PNG file (format {fmt})"], size, None
            if kind == "image" and mode != "RGB":
                bands = len(img.getbands())
                return [f"image is not 3-channel RGB (mode {mode}, {bands} band(s))"], size, None
            if kind == "mask" and mode not in _SINGLE_BAND_MODES:
                return [f"mask is not single-channel (mode {mode})"], size, None
            if not full:
                return [], size, None
            img.load()
            if kind == "image":
                return [], size, None
            values = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return [unreadable_message(exc)], None, None
    counts = np.bincount(values.reshape(-1).astype(np.int64), minlength=MAX_RAW_VALUE + 1)
    bad = np.flatnonzero(counts[MAX_RAW_VALUE + 1 :]) + MAX_RAW_VALUE + 1
    problems = []
    if len(bad):
        listed = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        problems.append(f"mask values outside 0..{MAX_RAW_VALUE}: {listed}")
    return problems, size, counts[: MAX_RAW_VALUE + 1]


def _inspect_pair(args: tuple[str | None, str | None, bool]) -> tuple[list[Problem], tuple[int, int] | None, np.ndarray | None]:
    image, mask, full = args
    problems: list[Problem] = []
    image_size = mask_size = counts = None
    if image is not None:
        msgs, image_size, _ = _inspect_png(image, "image", full)
        problems += [Problem(image, m) for m in msgs]
    if mask is not None:
        msgs, mask_size, counts = _inspect_png(mask, "mask", full)
        problems += [Problem(mask, m) for m in msgs]
    if image_size and mask_size and image_size != mask_size:
        problems.append(
            Problem(image, f"image is {image_size[0]}x{image_size[1]} but its mask {mask} is "
                    f"{mask_size[0]}x{mask_size[1]}")
        )
    return problems, image_size, counts


def _pngs(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.name: p for p in folder.iterdir() if p.suffix.lower() == ".png"}


def list_pairs(root: Path, split: str, scene: str) -> tuple[list[tuple[Path | None, Path | None]], list[Problem]]:
    """Pair images and masks of one ``<split>/<scene>`` folder by file name; report what is missing."""
    folder = root / split / scene
    problems: list[Problem] = []
    if not folder.is_dir():
        return [], [Problem(str(folder), f"{split}/{scene} folder missing")]
    images_dir, masks_dir = folder / IMAGES_DIR, folder / MASKS_DIR
    has_masks = split in SPLITS_WITH_MASKS
    if not images_dir.is_dir():
        problems.append(Problem(str(images_dir), f"{IMAGES_DIR}/ folder missing"))
    if has_masks and not masks_dir.is_dir():
        problems.append(Problem(str(masks_dir), f"{MASKS_DIR}/ folder missing"))
    images, masks = _pngs(images_dir), _pngs(masks_dir) if has_masks else {}
    if images_dir.is_dir() and not images:
        problems.append(Problem(str(images_dir), "no PNG images in this folder"))
    pairs: list[tuple[Path | None, Path | None]] = []
    for name in sorted(images.keys() | masks.keys(), key=_natural_key):
        image, mask = images.get(name), masks.get(name)
        if image is None:
            problems.append(Problem(str(mask), f"mask without image (no {IMAGES_DIR}/{name})"))
        elif has_masks and mask is None and masks_dir.is_dir():
            problems.append(Problem(str(image), f"image without mask (no {MASKS_DIR}/{name})"))
        pairs.append((image, mask))
    return pairs, problems


def _natural_key(name: str) -> tuple[int, str]:
    stem = name.rsplit(".", 1)[0]
    return (int(stem), name) if stem.isdigit() else (1 << 62, name)


def check_tree(
    root: str | Path,
    splits: Iterable[str] = SPLITS,
    scenes: str | Sequence[str] = SCENES,
    level: str = "full",
    workers: int | None = None,
) -> DataReport:
    """Validate a LoveDA tree and return a :class:`DataReport` (never raises for bad data).

    Args:
        root: the LoveDA root (holding ``Train/``, ``Val/``, ``Test/``).
        splits: splits to check (all three by default); each one named must be present.
        scenes: ``"both"``, ``"urban"``, ``"rural"`` or a list of them.
        level: ``"quick"`` (pairing and headers) or ``"full"`` (decode everything).
        workers: processes for the full check (default: the CPU count).

    Raises:
        DatasetNotFoundError: when ``root`` itself is not a folder.
    """
    if level not in ("quick", "full"):
        raise ValueError(f"level={level!r}: use 'quick' or 'full'")
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"LoveDA root not found: {root} is not a folder. Pass the folder that holds "
            "Train/, Val/ and Test/ (from the released zips), or generate a mini-LoveDA with "
            "`python -m loveda_utils make-synthetic OUT`."
        )
    splits = [normalize_split(s) for s in splits]
    scenes = normalize_scenes(scenes)
    full = level == "full"
    problems: list[Problem] = []
    summaries: list[SceneSummary] = []
    jobs: list[tuple[SceneSummary, tuple[str | None, str | None, bool]]] = []
    for split in splits:
        if not (root / split).is_dir():
            problems.append(Problem(str(root / split), f"split folder {split}/ missing"))
            continue
        for scene in scenes:
            pairs, found = list_pairs(root, split, scene)
            problems += found
            summary = SceneSummary(split, scene)
            summary.n_images = sum(1 for image, _ in pairs if image is not None)
            summary.n_masks = sum(1 for _, mask in pairs if mask is not None)
            summary.raw_counts = np.zeros(MAX_RAW_VALUE + 1, dtype=np.int64) if full else None
            summaries.append(summary)
            jobs += [(summary, (_str(i), _str(m), full)) for i, m in pairs]

    for summary, (found, size, counts) in zip(
        (s for s, _ in jobs), _map(_inspect_pair, [a for _, a in jobs], full, workers)
    ):
        problems += found
        if size is not None:
            summary.sizes.add(size)
        if counts is not None and summary.raw_counts is not None:
            summary.raw_counts += counts
    return DataReport(root=root, level=level, problems=problems, summaries=summaries)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _map(fn, items: list, full: bool, workers: int | None):
    """Decode in parallel for the full check (PNG decoding is CPU-bound); headers in-process."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if not full or workers <= 1 or len(items) < 16:
        return map(fn, items)
    # spawn, not fork: the caller may hold threads (torch, Jupyter) that fork would copy mid-lock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(fn, items, chunksize=8))


def class_frequencies(report: DataReport):
    """Pixel counts per split/scene/class from a full report, as a tidy ``pandas.DataFrame``.

    Columns: ``split``, ``scene``, ``class`` (``"no-data"`` or a class name), ``pixels``, ``share``
    (of all pixels of that split/scene) and ``labelled_share`` (of the labelled pixels).
    """
    import pandas as pd

    if report.level != "full":
        raise ValueError("class_frequencies needs check_tree(..., level='full')")
    rows = []
    for s in report.summaries:
        counts = s.raw_counts
        total, labelled = int(counts.sum()), int(counts[1:].sum())
        for raw, n in enumerate(counts):
            name = "no-data" if raw == 0 else CLASS_NAMES[raw - 1]
            rows.append({
                "split": s.split, "scene": s.scene, "class": name, "pixels": int(n),
                "share": n / total if total else 0.0,
                "labelled_share": (n / labelled if labelled else 0.0) if raw else float("nan"),
            })
    return pd.DataFrame(rows)
