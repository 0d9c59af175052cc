"""The released folder layout, and the files a loader takes from it (the one place for both).

``<root>/<Split>/<Scene>/images_png/<id>.png`` with the mask of the same name in ``masks_png/``
beside it. torchgeo's ``LoveDA`` lists a scene's tiles with ``glob("images_png/*.png")``: on a
case-sensitive file system that skips ``<id>.PNG``, hidden files and anything not ending in
``.png``. :func:`loader_images` is that listing, used by the dataset and by ``check-data``
alike, so the counts ``check-data`` reports are the tiles training will see.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

IMAGES_DIR = "images_png"
MASKS_DIR = "masks_png"
#: The pattern torchgeo's ``LoveDA._load_files`` globs inside ``images_png/``.
TILE_PATTERN = "*.png"
#: Suffixes (any case) of files that look like tiles: skipping one of them is a problem.
_TILE_LIKE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def loader_images(scene_dir: str | Path) -> list[Path]:
    """The images the loader reads from ``<scene_dir>/images_png``, in torchgeo's order."""
    return [Path(p) for p in sorted(glob.glob(os.path.join(scene_dir, IMAGES_DIR, TILE_PATTERN)))]


def loader_files(folder: str | Path) -> list[Path]:
    """What ``glob(TILE_PATTERN)`` takes from one ``images_png``/``masks_png`` folder."""
    return [Path(p) for p in sorted(glob.glob(os.path.join(folder, TILE_PATTERN)))]


def mask_for(image: str | Path) -> Path:
    """The mask path of an image: ``masks_png/<name>`` beside the image's own folder.

    Derived from the file's folder, not by replacing ``images_png`` in the whole path (as
    torchgeo does), so a root whose path contains ``images_png`` still works.
    """
    image = Path(image)
    return image.parent.parent / MASKS_DIR / image.name


def skipped_files(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """Entries of ``folder`` that :func:`loader_files` leaves out: ``(tile-like, other)``.

    Tile-like: a PNG, JPEG or TIFF suffix in any case, or a hidden ``.<name>.png``; a tile the
    loader would silently drop. Other: anything else (``.DS_Store``, ``Thumbs.db``, notes).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [], []
    taken = set(loader_files(folder))
    tiles: list[Path] = []
    other: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry in taken:
            continue
        (tiles if entry.suffix.lower() in _TILE_LIKE_SUFFIXES else other).append(entry)
    return tiles, other
