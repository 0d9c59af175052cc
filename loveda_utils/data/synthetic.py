"""Generate a "mini-LoveDA": structured synthetic scenes in the released LoveDA layout.

The benchmark's embedded default when no real LoveDA root is given. The tree is laid out exactly
like the released archive, so torchgeo's ``LoveDA(download=False)`` and every reader in this
package load it unchanged::

    <out>/{Train,Val,Test}/{Urban,Rural}/images_png/<id>.png   RGB uint8, size x size
    <out>/{Train,Val}/{Urban,Rural}/masks_png/<id>.png         'L' uint8, raw values 0..7

plus a marker file ``MINI_LOVEDA.json`` at the root (:func:`is_synthetic`, :func:`read_marker`):
every results record made on such a root says ``synthetic: true``, so a synthetic number never
looks like a LoveDA result.

Each tile is a procedural land-cover map (the mask) drawn first; the image is then rendered from
that mask, pixel for pixel. Urban tiles hold a road grid with blocks of buildings in rows, parks,
construction sites and the odd river; rural tiles hold field parcels with crop stripes, forest
patches, lakes or rivers, a few roads and villages. Every class has its own colour distribution
*and* texture, blurred by noise and per-tile brightness/colour jitter, so a model has to look at
more than one pixel's colour, yet a small CNN learns it in minutes on a CPU. Some tiles carry
black no-data regions (raw 0) along an edge or corner, like the real tile edges.

Everything is vectorised numpy; each tile draws from its own ``numpy.random.Generator`` seeded by
``(seed, split, scene, index)``, so the same arguments give byte-identical files, and trees that
differ only in ``tiles`` share the content of their first tiles (ids differ, being contiguous).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from loveda_utils.data.classes import (
    SCENES,
    SPLITS,
    SPLITS_WITH_MASKS,
)
from loveda_utils.errors import ConfigError, InvalidDataError

from .synthetic_scene import make_tile

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_SIZE",
    "DEFAULT_TILES",
    "GENERATOR_VERSION",
    "MARKER_NAME",
    "generate_mini_loveda",
    "is_synthetic",
    "read_marker",
]

#: Train tiles per scene of the default tree (Val gets half, Test a quarter).
DEFAULT_TILES: int = 16
#: Tile side in pixels of the default tree.
DEFAULT_SIZE: int = 256
#: Seed of the default tree.
DEFAULT_SEED: int = 0
#: Bumped whenever the same arguments would produce different files.
GENERATOR_VERSION: int = 1
#: Marker file at the root of every generated tree.
MARKER_NAME: str = "MINI_LOVEDA.json"
#: Smallest tile side accepted: below it the scene structures degenerate to single pixels.
MIN_SIZE: int = 32

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def split_counts(tiles: int) -> dict[str, int]:
    """Tiles per scene for each split: ``tiles`` Train, half as many Val, a quarter Test (>= 1)."""
    return {"Train": tiles, "Val": max(1, tiles // 2), "Test": max(1, tiles // 4)}


def generate_mini_loveda(
    out: str | Path,
    tiles: int = DEFAULT_TILES,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic LoveDA tree to ``out`` and return its path.

    Args:
        out: root folder of the new tree. Must not exist or be empty, unless ``overwrite``.
        tiles: Train tiles per scene; Val gets ``max(1, tiles // 2)``, Test
            ``max(1, tiles // 4)`` per scene.
        size: tile side in pixels (>= 32). Scene structures scale with it.
        seed: base seed; the same arguments always give byte-identical files.
        overwrite: replace an existing mini-LoveDA tree at ``out``. A non-empty folder that is
            not a mini-LoveDA tree (no ``MINI_LOVEDA.json``) is never deleted.

    Returns:
        ``Path(out)``.

    Raises:
        ConfigError: for ``tiles < 1``, ``size < 32``, a non-integer argument, or an ``out``
            that exists and is a file, is non-empty without ``overwrite``, or is non-empty and
            not a mini-LoveDA tree.

    The tree is written into a hidden temporary sibling of ``out`` and renamed into place at
    the end, so an interrupted run never leaves a half-written tree at ``out``.
    """
    for name, value in (("tiles", tiles), ("size", size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{name}={value!r} must be an integer")
    if tiles < 1:
        raise ConfigError(f"tiles={tiles} must be >= 1 (Train tiles per scene)")
    if size < MIN_SIZE:
        raise ConfigError(f"size={size} must be >= {MIN_SIZE} pixels (the tile side)")
    if seed < 0:
        raise ConfigError(f"seed={seed} must be >= 0")

    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file; give a folder path for the new tree")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"out={str(out)!r} is not empty; choose another folder or pass overwrite=True "
                "to replace a previous mini-LoveDA tree"
            )
        if not is_synthetic(out):
            # Never delete what this module did not write (e.g. a real LoveDA root).
            raise ConfigError(
                f"out={str(out)!r} is not empty and holds no {MARKER_NAME}, so it is not a "
                "mini-LoveDA tree; overwrite=True only replaces those. Choose an empty folder"
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "partial")
    tmp.mkdir()
    try:
        marker = _write_tree(tmp, tiles=int(tiles), size=int(size), seed=int(seed))
        _install(tmp, out, marker, replace=overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _sibling(out: Path, kind: str) -> Path:
    """A hidden, unique sibling folder name of ``out`` (same file system, so renames are atomic)."""
    return out.parent / f".{out.name}.{kind}-{uuid.uuid4().hex[:12]}"


def _install(tmp: Path, out: Path, marker: dict, replace: bool) -> None:
    """Rename the finished tree ``tmp`` to ``out``; a replaced tree is removed only afterwards."""
    old = None
    if replace and out.is_dir() and any(out.iterdir()):
        old = _sibling(out, "old")
        os.replace(out, old)
    try:
        os.replace(tmp, out)  # atomic; also fine over an empty folder
    except OSError as err:
        if old is not None:
            os.replace(old, out)  # put the previous tree back
            raise
        # Another process may have finished the same tree first (parallel runs that all default
        # to the mini-LoveDA). Same arguments give byte-identical files, so theirs is ours.
        try:
            existing = read_marker(out)
        except InvalidDataError:
            existing = None
        keys = ("version", "tiles", "size", "seed")
        if existing is not None and all(existing.get(k) == marker[k] for k in keys):
            return
        raise ConfigError(
            f"out={str(out)!r} was filled by something else while the tree was being written; "
            "choose another folder"
        ) from err
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_marker(root: str | Path) -> dict | None:
    """Return the content of ``<root>/MINI_LOVEDA.json``, or ``None`` when there is none.

    Raises:
        InvalidDataError: when the marker exists but is not a JSON object.
    """
    path = Path(root) / MARKER_NAME
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidDataError(
            f"{path} is not valid JSON ({err}); regenerate the tree with "
            "`python -m loveda_utils make-synthetic`",
            [f"{path}: {err}"],
        ) from err
    if not isinstance(marker, dict):
        raise InvalidDataError(f"{path} must hold a JSON object", [f"{path}: not an object"])
    return marker


def is_synthetic(root: str | Path) -> bool:
    """Whether ``root`` is a generated mini-LoveDA tree (its marker file is there).

    Deliberately only checks presence: even a damaged marker keeps a tree flagged synthetic.
    """
    return (Path(root) / MARKER_NAME).is_file()


# --------------------------------------------------------------------------------------------
# Tree writing
# --------------------------------------------------------------------------------------------


def _write_tree(root: Path, tiles: int, size: int, seed: int) -> dict:
    """Write every split/scene of the tree, then the marker (last); return the marker."""
    counts = split_counts(tiles)
    next_id = 0  # contiguous ids across the tree, one range per split/scene, like LoveDA
    for split_index, split in enumerate(SPLITS):
        for scene_index, scene in enumerate(SCENES):
            images = root / split / scene / "images_png"
            images.mkdir(parents=True)
            masks = root / split / scene / "masks_png"
            if split in SPLITS_WITH_MASKS:
                masks.mkdir()
            for index in range(counts[split]):
                rng = np.random.default_rng([seed, split_index, scene_index, index])
                # Every 4th tile (index 1, 5, ...) has no-data, so even tiny trees hold some.
                nodata = True if index % 4 == 1 else None
                mask, image = make_tile(rng, size, urban=scene == "Urban", nodata=nodata)
                name = f"{next_id}.png"
                next_id += 1
                # No pnginfo/time chunks: PIL's PNG output is then a pure function of the pixels.
                Image.fromarray(image, mode="RGB").save(images / name, format="PNG")
                if split in SPLITS_WITH_MASKS:
                    Image.fromarray(mask, mode="L").save(masks / name, format="PNG")
    marker = {
        "synthetic": True,
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "tiles": tiles,
        "size": size,
        "seed": seed,
        "counts": {split: dict.fromkeys(SCENES, n) for split, n in counts.items()},
    }
    (root / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return marker
