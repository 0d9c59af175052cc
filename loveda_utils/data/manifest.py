"""The LoveDA release manifest: facts about every tile of the release, shipped with the package.

``release/manifest.csv.gz`` holds one row per tile of the release (5,987): its split and scene,
size, the MD5 of the image file (missing for 605 tiles), the image's channel means and
standard deviations, and each mask's pixel count per raw value 0..7 (columns and provenance in
``release/README.md``). Two uses:

* ``check-data`` compares a tree with it (:func:`compare_tile`, :func:`coverage`,
  :func:`missing_tiles`): every tile present must sit in its own split/scene folder, have its
  size, its image MD5 (or, where the manifest has none, its channel means) and its mask's
  class counts. A tree carrying the mini-LoveDA marker is not LoveDA and is not compared.
* The release's class and domain statistics without the data (:func:`release_class_frequencies`,
  :func:`release_domain_statistics`), shown beside a tree's own in notebook 01.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from .classes import CLASS_NAMES, MAX_RAW_VALUE, SCENES, SPLITS, SPLITS_WITH_MASKS
from .report import DataReport, Problem, ReleaseCoverage, class_frequencies, frequency_rows

if TYPE_CHECKING:
    import pandas as pd

#: The manifest inside the package (``importlib.resources``, so an installed copy finds it).
MANIFEST_RESOURCE = ("release", "manifest.csv.gz")
CHANNELS = ("r", "g", "b")
MEAN_COLUMNS = tuple(f"mean_{c}" for c in CHANNELS)
STD_COLUMNS = tuple(f"std_{c}" for c in CHANNELS)
MASK_COUNT_COLUMNS = tuple(f"mask_count_{v}" for v in range(MAX_RAW_VALUE + 1))
#: The manifest's channel means are rounded to ~8 significant digits (float32); a difference
#: beyond this is a different image, though a change of a few pixels stays below it.
MEAN_TOLERANCE = 1e-4
#: Differing class counts or missing id ranges named in one message.
_LISTED = 4


@dataclass(frozen=True, slots=True)
class ReleaseTile:
    """One row of the manifest."""

    split: str
    scene: str
    id: int
    width: int
    height: int
    #: MD5 of the image PNG as released; ``None`` where the manifest has none.
    image_md5: str | None
    mean_rgb: tuple[float, float, float]
    #: Pixels per raw mask value 0..7; ``None`` for Test (no public masks).
    mask_counts: tuple[int, ...] | None


def _open_manifest() -> IO[bytes]:
    resource = resources.files(__package__).joinpath(*MANIFEST_RESOURCE)
    return resource.open("rb")


@cache
def release_tiles() -> dict[int, ReleaseTile]:
    """Every tile of the release by id (ids are unique across splits and scenes)."""
    tiles: dict[int, ReleaseTile] = {}
    with _open_manifest() as raw, gzip.open(raw, "rt", newline="") as text:
        for row in csv.DictReader(text):
            counts = tuple(row[c] for c in MASK_COUNT_COLUMNS)
            tile = ReleaseTile(
                split=row["split"], scene=row["scene"], id=int(row["id"]),
                width=int(row["width"]), height=int(row["height"]),
                image_md5=row["image_md5"] or None,
                mean_rgb=tuple(float(row[c]) for c in MEAN_COLUMNS),  # type: ignore[arg-type]
                mask_counts=tuple(int(c) for c in counts) if all(counts) else None,
            )
            tiles[tile.id] = tile
    return tiles


def release_ids(split: str, scene: str) -> set[int]:
    """Ids of the release's tiles in one ``split/scene``."""
    return {t.id for t in release_tiles().values() if t.split == split and t.scene == scene}


def tile_id(name: str) -> int | None:
    """The release id of a file name (``"1366.png"`` -> 1366), ``None`` if it cannot be one."""
    stem = Path(name).stem
    return int(stem) if stem.isdigit() and str(int(stem)) == stem else None


def release_row(name: str) -> ReleaseTile | None:
    """The manifest row of a tile file name, ``None`` if the release has no such tile."""
    number = tile_id(name)
    return None if number is None else release_tiles().get(number)


# -- comparing a tree with the release ---------------------------------------------------------


def compare_tile(
    row: ReleaseTile | None,
    split: str,
    scene: str,
    image: str | None,
    mask: str | None,
    *,
    image_size: tuple[int, int] | None = None,
    image_md5: str | None = None,
    image_mean: Sequence[float] | None = None,
    mask_counts: np.ndarray | None = None,
) -> list[Problem]:
    """How one tile of a tree differs from its row of the release (empty list: it does not).

    ``image_size`` comes from the PNG header; ``image_md5``, ``image_mean`` and
    ``mask_counts`` from the full check (``None`` where not computed: that comparison is skipped).
    """
    path = image or mask
    assert path is not None, "a tile has an image or a mask"
    name = Path(path).name
    if row is None:
        return [Problem(path, f"not a LoveDA release tile: the release has no tile {name} "
                              "(check-data --no-manifest checks other data in this layout)")]
    problems = []
    if (row.split, row.scene) != (split, scene):
        problems.append(Problem(path, f"tile {name} belongs in {row.split}/{row.scene} in the "
                                      f"release, not {split}/{scene}: move it there"))
    if image is not None and image_size is not None and image_size != (row.width, row.height):
        problems.append(Problem(image, f"image is {image_size[0]}x{image_size[1]}, the release "
                                       f"tile is {row.width}x{row.height}"))
    if image is not None and image_md5 is not None and row.image_md5 is not None \
            and image_md5 != row.image_md5:
        problems.append(Problem(image, f"image MD5 {image_md5} differs from the release's "
                                       f"{row.image_md5} (the file was altered or re-encoded)"))
    if image is not None and image_mean is not None and row.image_md5 is None:
        if any(abs(a - b) > MEAN_TOLERANCE for a, b in zip(image_mean, row.mean_rgb)):
            here = ", ".join(f"{v:.4f}" for v in image_mean)
            there = ", ".join(f"{v:.4f}" for v in row.mean_rgb)
            problems.append(Problem(image, f"image channel means {here} differ from the "
                                           f"release's {there} (this tile has no release MD5)"))
    if mask is not None and mask_counts is not None and row.mask_counts is not None:
        differ = [v for v in range(MAX_RAW_VALUE + 1) if int(mask_counts[v]) != row.mask_counts[v]]
        if differ:
            listed = "; ".join(
                f"{v} ({'no-data' if v == 0 else CLASS_NAMES[v - 1]}) {int(mask_counts[v]):,} "
                f"here, {row.mask_counts[v]:,} in the release" for v in differ[:_LISTED])
            more = f"; and {len(differ) - _LISTED} more" if len(differ) > _LISTED else ""
            problems.append(Problem(mask, f"mask class counts differ from the release: raw value "
                                          f"{listed}{more}"))
    return problems


def coverage(found: Mapping[tuple[str, str], Iterable[int]]) -> ReleaseCoverage:
    """Release tiles present per checked ``(split, scene)``: ``found`` holds the ids in each folder."""
    tiles = release_tiles()
    per_scene = {}
    for (split, scene), ids in found.items():
        expected = release_ids(split, scene)
        per_scene[(split, scene)] = (len(expected.intersection(ids)), len(expected))
    return ReleaseCoverage(synthetic=False, release_tiles=len(tiles), per_scene=per_scene)


def missing_tiles(folder: Path, split: str, scene: str, present: Iterable[int]) -> Problem | None:
    """For ``--complete``: the release tiles of ``split/scene`` absent from ``folder``, as one problem."""
    expected = release_ids(split, scene)
    missing = sorted(expected.difference(present))
    if not missing:
        return None
    ranges = _ranges(missing)
    listed = ", ".join(ranges[:_LISTED]) + (", ..." if len(ranges) > _LISTED else "")
    return Problem(str(folder), f"{len(missing):,} of {len(expected):,} release tiles missing "
                                f"(ids {listed})")


def _ranges(ids: list[int]) -> list[str]:
    """``[1, 2, 3, 7]`` -> ``["1-3", "7"]`` (ids sorted)."""
    out: list[str] = []
    start = prev = ids[0]
    for i in [*ids[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return out


# -- the release's statistics ------------------------------------------------------------------


def release_frame() -> pd.DataFrame:
    """The manifest as a ``pandas.DataFrame``, one row per tile (columns: ``release/README.md``)."""
    import pandas as pd

    with _open_manifest() as raw:
        return pd.read_csv(raw, compression="gzip", dtype={"image_md5": "string"})


def release_class_frequencies(
    splits: Sequence[str] = SPLITS_WITH_MASKS, scenes: Sequence[str] = SCENES
) -> pd.DataFrame:
    """The release's pixels per split/scene/class, in :func:`~.report.class_frequencies`'s columns."""
    import pandas as pd

    frame = release_frame()
    rows = []
    for split in splits:
        for scene in scenes:
            part = frame[(frame.split == split) & (frame.scene == scene)]
            counts = part[list(MASK_COUNT_COLUMNS)].sum().to_numpy(dtype=np.int64)
            if counts.sum():  # Test has no public masks
                rows += frequency_rows(split, scene, counts)
    return pd.DataFrame(rows, columns=["split", "scene", "class", "pixels", "share", "labelled_share"])


def release_domain_statistics(frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per split/scene of the release: tiles, no-data share, and the RGB mean and standard
    deviation over all pixels (pooled from the per-image values; every tile has the same size).

    ``frame``: rows of :func:`release_frame` to pool (default: the whole release).
    """
    import pandas as pd

    frame = release_frame() if frame is None else frame
    rows = []
    for split in SPLITS:
        for scene in SCENES:
            part = frame[(frame.split == split) & (frame.scene == scene)]
            if part.empty:
                continue
            counts = part[list(MASK_COUNT_COLUMNS)].sum().to_numpy(dtype=np.float64)
            row: dict[str, object] = {"split": split, "scene": scene, "tiles": len(part),
                                      "no-data share": counts[0] / counts.sum() if counts.sum() else np.nan}
            for channel, mean, std in zip(CHANNELS, MEAN_COLUMNS, STD_COLUMNS):
                pooled = part[mean].mean()
                row[f"mean {channel}"] = pooled
                row[f"std {channel}"] = float(np.sqrt((part[std] ** 2 + part[mean] ** 2).mean() - pooled ** 2))
            rows.append(row)
    return pd.DataFrame(rows)


def class_shares_beside_release(report: DataReport) -> pd.DataFrame:
    """A full report's class shares beside the release's, per labelled split/scene of the tree.

    Columns: ``split``, ``scene``, ``class`` (no-data first), ``release`` and ``this tree``:
    for no-data the share of all pixels, for a class its share of the labelled pixels.
    """
    tree = class_frequencies(report)
    tree = tree[tree.groupby(["split", "scene"])["pixels"].transform("sum") > 0]
    pairs = list(dict.fromkeys(zip(tree.split, tree.scene)))
    release = release_class_frequencies(
        [s for s in SPLITS_WITH_MASKS if any(p[0] == s for p in pairs)], SCENES)
    keys = ["split", "scene", "class"]

    def shares(frame: pd.DataFrame, name: str) -> pd.DataFrame:
        value = frame.labelled_share.where(frame["class"] != "no-data", frame.share)
        return frame[keys].assign(**{name: value.to_numpy()})

    merged = shares(release, "release").merge(shares(tree, "this tree"), on=keys, how="right")
    return merged.reset_index(drop=True)


def domain_statistics_beside_release(report: DataReport) -> pd.DataFrame:
    """The release's tiles, no-data share and RGB statistics per split/scene (
    :func:`release_domain_statistics`), with the tree's tiles and no-data share beside them."""
    import pandas as pd

    stats = release_domain_statistics().rename(columns={"tiles": "release tiles",
                                                        "no-data share": "release no-data"})
    tree = {(s.split, s.scene): s for s in report.summaries}
    counts = {k: s.raw_counts for k, s in tree.items() if s.raw_counts is not None and s.raw_counts.sum()}
    keys = list(zip(stats.split, stats.scene))
    stats.insert(3, "tree tiles", pd.array([tree[k].n_images if k in tree else None for k in keys],
                                           dtype="Int64"))
    stats.insert(5, "tree no-data", [counts[k][0] / counts[k].sum() if k in counts else np.nan
                                     for k in keys])
    return stats
