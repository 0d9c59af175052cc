"""Validate a LoveDA tree before anything trains on it (``python -m loveda_utils check-data ROOT``).

Two depths:

* ``quick``: folders, image/mask pairing, PNG headers (mode, bit depth and size), and every mask
  decoded for its values (masks are small to decode; images are not decoded). The DataModule
  runs it up front, so a 16-bit mask or a value outside 0..7 fails before any worker starts.
* ``full``: also the images (truncated or corrupt files) and each mask's pixels per raw value,
  which gives the class frequencies and no-data share for free.

Only the tiles the loader reads are counted (:func:`~loveda_utils.data.layout.loader_images`);
files it would skip are reported: a skipped tile (``3.PNG``, ``3.jpg``) is a problem, other files
are listed as ignored.

With ``release=True`` (``check-data``'s default) every tile present is also compared with its row
of the LoveDA release manifest (:mod:`~loveda_utils.data.manifest`): quick compares placement
(split/scene) and size; full also each image's MD5 (an image whose MD5 matches is the released
file byte for byte, so it is not decoded again) and each mask's class counts. ``complete=True``
requires every release tile of the splits and scenes checked. A tree carrying the mini-LoveDA
marker is synthetic: it is said so, and not compared.

Every problem names its file. :class:`~loveda_utils.data.report.DataReport` renders the report.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetNotFoundError, InvalidDataError, check_int
from . import manifest
from .classes import (
    MAX_RAW_VALUE,
    SCENES,
    SPLITS,
    SPLITS_WITH_MASKS,
    normalize_scenes,
    normalize_split,
)
from .layout import IMAGES_DIR, MASKS_DIR, loader_files, skipped_files
from .pngio import read_png, unreadable_message
from .report import (
    DataReport,
    Problem,
    ReleaseCoverage,
    SceneSummary,
    class_frequencies,
)
from .synthetic import is_synthetic

__all__ = [
    "IMAGES_DIR", "MASKS_DIR", "MAX_RAW_VALUE", "DataReport", "Problem", "SceneSummary",
    "check_tree", "class_frequencies", "list_pairs",
]

LEVELS = ("quick", "full")
#: 8-bit single-band modes a mask may have ("P": palette indices are the values).
_MASK_MODES = {"L", "P"}
#: Pillow's modes for 16- and 32-bit greyscale PNGs.
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
#: Tiles below which the check runs in the calling thread.
_POOL_MIN_TILES = 16


@dataclass
class _TileJob:
    """What to check about one tile."""

    image: str | None
    mask: str | None
    full: bool
    #: The release MD5 of the image, if the tree is compared with the release and it has one.
    expected_md5: str | None = None
    #: Compute the image's MD5 (full check against the release).
    want_md5: bool = False
    #: Compute the image's channel means (full check against the release, no MD5 there).
    want_mean: bool = False


@dataclass
class _TileFacts:
    problems: list[Problem] = field(default_factory=list)
    image_size: tuple[int, int] | None = None
    mask_size: tuple[int, int] | None = None
    #: Pixels per raw value 0..7 (full check).
    mask_counts: np.ndarray | None = None
    image_md5: str | None = None
    image_mean: tuple[float, ...] | None = None


# -- per-file checks (run on worker threads) ---------------------------------------------------


def _header(path: str, kind: str) -> tuple[list[str], tuple[int, int] | None]:
    """Problems with a PNG's header (format, mode, bit depth) and its (width, height)."""
    try:
        with Image.open(path) as img:
            size, mode, fmt = img.size, img.mode, img.format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return [unreadable_message(exc)], None
    if fmt != "PNG":
        return [f"not a PNG file (format {fmt})"], size
    if kind == "image" and mode != "RGB":
        return [f"image is not 3-channel RGB (mode {mode}, {Image.getmodebands(mode)} band(s))"], size
    if kind == "mask" and mode in _WIDE_MODES:
        return [f"mask is 16-bit (mode {mode}); LoveDA masks are 8-bit single-channel PNGs with "
                f"values 0..{MAX_RAW_VALUE}: save it as 8-bit (mode L)"], size
    if kind == "mask" and mode not in _MASK_MODES:
        return [f"mask is not 8-bit single-channel (mode {mode})"], size
    return [], size


def _decode(path: str, kind: str) -> tuple[np.ndarray | None, str | None]:
    """The decoded array, or the problem message (the reader's own, without the path)."""
    try:
        return read_png(path, kind), None  # type: ignore[arg-type]
    except InvalidDataError as exc:
        return None, str(exc).removeprefix(f"{path}: ")


def _mask_values(values: np.ndarray, full: bool) -> tuple[list[str], np.ndarray | None]:
    """Values outside 0..7 as a problem; with ``full`` the pixels per raw value 0..7."""
    counts: np.ndarray | None = None
    bad: np.ndarray
    if full:
        counts = np.bincount(values.reshape(-1), minlength=MAX_RAW_VALUE + 1)
        bad = np.flatnonzero(counts[MAX_RAW_VALUE + 1:]) + MAX_RAW_VALUE + 1
    elif values.max() > MAX_RAW_VALUE:
        bad = np.unique(values[values > MAX_RAW_VALUE])
    else:
        bad = np.empty(0, dtype=np.int64)
    if not len(bad):
        return [], None if counts is None else counts[: MAX_RAW_VALUE + 1]
    listed = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
    return [f"mask values outside 0..{MAX_RAW_VALUE}: {listed}"], None


def _inspect_image(job: _TileJob, facts: _TileFacts) -> None:
    path = job.image
    assert path is not None
    messages, facts.image_size = _header(path, "image")
    if messages or not job.full:
        facts.problems += [Problem(path, m) for m in messages]
        return
    if job.want_md5:
        with open(path, "rb") as f:
            facts.image_md5 = hashlib.file_digest(f, "md5").hexdigest()
        if facts.image_md5 == job.expected_md5:
            return  # the released file byte for byte: it decodes (and its means are the release's)
    pixels, message = _decode(path, "image")
    if message is not None:
        facts.problems.append(Problem(path, message))
    elif job.want_mean and pixels is not None:
        sums = pixels.reshape(-1, 3).sum(axis=0, dtype=np.uint64)
        facts.image_mean = tuple(float(s) / (pixels.shape[0] * pixels.shape[1]) for s in sums)


def _inspect_mask(job: _TileJob, facts: _TileFacts) -> None:
    path = job.mask
    assert path is not None
    messages, facts.mask_size = _header(path, "mask")
    if not messages:
        values, message = _decode(path, "mask")
        if message is not None:
            messages = [message]
        elif values is not None:
            messages, facts.mask_counts = _mask_values(values, job.full)
    facts.problems += [Problem(path, m) for m in messages]


def _inspect_tile(job: _TileJob) -> _TileFacts:
    facts = _TileFacts()
    if job.image is not None:
        _inspect_image(job, facts)
    if job.mask is not None:
        _inspect_mask(job, facts)
    if job.image and facts.image_size and facts.mask_size and facts.image_size != facts.mask_size:
        (w, h), (mw, mh) = facts.image_size, facts.mask_size
        facts.problems.append(Problem(job.image, f"image is {w}x{h} but its mask {job.mask} is {mw}x{mh}"))
    return facts


# -- the tree ----------------------------------------------------------------------------------


def list_pairs(root: Path, split: str, scene: str) -> tuple[list[tuple[Path | None, Path | None]], list[Problem], list[str]]:
    """Pair the images and masks the loader reads in one ``<split>/<scene>`` folder by file name.

    Returns the pairs, the problems (missing folders or partners, skipped tiles) and the other
    files the loader ignores.
    """
    folder = root / split / scene
    if not folder.is_dir():
        return [], [Problem(str(folder), f"{split}/{scene} folder missing")], []
    images_dir, masks_dir = folder / IMAGES_DIR, folder / MASKS_DIR
    has_masks = split in SPLITS_WITH_MASKS
    problems: list[Problem] = []
    if not images_dir.is_dir():
        problems.append(Problem(str(images_dir), f"{IMAGES_DIR}/ folder missing"))
    if has_masks and not masks_dir.is_dir():
        problems.append(Problem(str(masks_dir), f"{MASKS_DIR}/ folder missing"))
    ignored: list[str] = []
    for tile_dir in (images_dir, masks_dir) if has_masks else (images_dir,):
        tiles, other = skipped_files(tile_dir)
        problems += [Problem(str(p), f"skipped by the loader, which reads {tile_dir.name}/*.png "
                                     "(lower-case .png, not hidden): rename or convert it")
                     for p in tiles]
        ignored += [str(p) for p in other]
    images = {p.name: p for p in loader_files(images_dir)}
    masks = {p.name: p for p in loader_files(masks_dir)} if has_masks else {}
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
    return pairs, problems, ignored


def _natural_key(name: str) -> tuple[int, str]:
    stem = name.rsplit(".", 1)[0]
    return (int(stem), name) if stem.isdigit() else (1 << 62, name)


def check_tree(
    root: str | Path,
    splits: Iterable[str] = SPLITS,
    scenes: str | Sequence[str] = SCENES,
    level: str = "full",
    workers: int | None = None,
    *,
    release: bool = True,
    complete: bool = False,
) -> DataReport:
    """Validate a LoveDA tree and return a :class:`DataReport` (never raises for bad data).

    Args:
        root: the LoveDA root (holding ``Train/``, ``Val/``, ``Test/``).
        splits: splits to check (all three by default); each one named must be present.
        scenes: ``"both"``, ``"urban"``, ``"rural"`` or a list of them.
        level: ``"quick"`` (pairing, headers, mask values) or ``"full"`` (decode everything).
        workers: threads that check tiles (default: the CPU count).
        release: compare every tile present with the LoveDA release manifest (not done for a
            synthetic mini-LoveDA; pass ``False`` for other data in LoveDA's layout).
        complete: also require every release tile of ``splits`` and ``scenes``.

    Raises:
        DatasetNotFoundError: when ``root`` itself is not a folder.
        ValueError: for an unknown ``level``, split or scene; a
            :class:`~loveda_utils.errors.ConfigError` for ``workers`` below 1.
    """
    if workers is not None:
        check_int("workers", workers, hint=" (None: the CPU count)")
    if level not in LEVELS:
        raise ValueError(f"level={level!r}: use one of {', '.join(LEVELS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"LoveDA root not found: {root} is not a folder. Pass the folder that holds "
            "Train/, Val/ and Test/ (from the released zips: `python -m loveda_utils "
            "download-data ROOT`), or generate a mini-LoveDA with "
            "`python -m loveda_utils make-synthetic OUT`."
        )
    splits = [normalize_split(s) for s in splits]
    scenes = normalize_scenes(scenes if isinstance(scenes, str) else tuple(scenes))
    full = level == "full"
    synthetic = is_synthetic(root)
    compare = (release or complete) and not synthetic
    report = DataReport(root=root, level=level, problems=[], summaries=[])
    jobs: list[tuple[SceneSummary, _TileJob]] = []
    for split in splits:
        if not (root / split).is_dir():
            report.problems.append(Problem(str(root / split), f"split folder {split}/ missing"))
            continue
        for scene in scenes:
            pairs, found, ignored = list_pairs(root, split, scene)
            report.problems += found
            report.ignored += ignored
            summary = SceneSummary(split, scene)
            summary.n_images = sum(1 for image, _ in pairs if image is not None)
            summary.n_masks = sum(1 for _, mask in pairs if mask is not None)
            summary.raw_counts = np.zeros(MAX_RAW_VALUE + 1, dtype=np.int64) if full else None
            report.summaries.append(summary)
            jobs += [(summary, _job(image, mask, full, compare)) for image, mask in pairs]

    results = _map(_inspect_tile, [job for _, job in jobs], workers)
    present: dict[tuple[str, str], set[int]] = {(s.split, s.scene): set() for s in report.summaries}
    differing = 0
    for (summary, job), facts in zip(jobs, results):
        report.problems += facts.problems
        if facts.image_size is not None:
            summary.sizes.add(facts.image_size)
        if facts.mask_counts is not None and summary.raw_counts is not None:
            summary.raw_counts += facts.mask_counts
        if compare:
            found = _compare(summary, job, facts, present)
            differing += bool(found)
            report.problems += found

    if synthetic and (release or complete):
        report.release = ReleaseCoverage(synthetic=True, release_tiles=len(manifest.release_tiles()))
        if complete:
            report.problems.append(Problem(str(root), "--complete: this is the synthetic "
                                                      "mini-LoveDA, not the LoveDA release"))
    elif compare:
        report.release = manifest.coverage(present)
        report.release.compared, report.release.differing = len(jobs), differing
        if complete:
            report.problems += _missing(root, splits, scenes, present)
    return report


def _job(image: Path | None, mask: Path | None, full: bool, compare: bool) -> _TileJob:
    row = manifest.release_row((image or mask).name) if compare else None  # type: ignore[union-attr]
    md5 = row.image_md5 if row is not None else None
    return _TileJob(_str(image), _str(mask), full, expected_md5=md5,
                    want_md5=full and md5 is not None,
                    want_mean=full and row is not None and md5 is None)


def _compare(summary: SceneSummary, job: _TileJob, facts: _TileFacts,
             present: dict[tuple[str, str], set[int]]) -> list[Problem]:
    name = Path(job.image or job.mask or "").name
    row = manifest.release_row(name)
    if row is not None and job.image is not None and (row.split, row.scene) == (summary.split, summary.scene):
        present[(summary.split, summary.scene)].add(row.id)
    return manifest.compare_tile(
        row, summary.split, summary.scene, job.image, job.mask, image_size=facts.image_size,
        image_md5=facts.image_md5, image_mean=facts.image_mean, mask_counts=facts.mask_counts)


def _missing(root: Path, splits: Sequence[str], scenes: Sequence[str],
             present: dict[tuple[str, str], set[int]]) -> list[Problem]:
    found = (manifest.missing_tiles(root / split / scene, split, scene,
                                    present.get((split, scene), set()))
             for split in splits for scene in scenes)
    return [p for p in found if p is not None]


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _map(fn: Callable[[_TileJob], _TileFacts], items: list[_TileJob], workers: int | None) -> Iterable[_TileFacts]:
    """Check tiles on ``workers`` threads (default: the CPU count).

    Threads, not processes: the costly steps (libpng/zlib decoding, MD5) release the GIL, and
    threads need no start-up (a process would import torch through this package) and no
    ``if __name__ == "__main__"`` guard in the caller's script.
    """
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers <= 1 or len(items) < _POOL_MIN_TILES:
        return map(fn, items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check-data") as pool:
        return list(pool.map(fn, items))
