"""Tiles: the same files for every path, in one symlinked LoveDA tree per (size, count)."""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from loveda_utils.data.classes import SCENES
from loveda_utils.errors import ConfigError
from loveda_utils.paths import PROJECT_ROOT

from .report import progress

#: The 16 real LoveDA tiles used for 1024 px tiles: ``$LOVEDA_SAMPLE``, else a
#: ``shared/loveda_sample`` folder beside the repository (never copied into it).
DEFAULT_SAMPLE_ROOT = Path(
    os.environ.get("LOVEDA_SAMPLE", PROJECT_ROOT.parent / "shared" / "loveda_sample")
)


@dataclass(frozen=True)
class Tiles:
    """A LoveDA tree holding ``n`` tiles of ``size`` px under ``Val/<Scene>/`` (symlinks)."""

    root: Path
    n: int
    size: int
    scenes: tuple[str, ...]
    source: str


def png_size(path: Path) -> int:
    """The side in px of the square tile ``path`` (from its header); other shapes are refused."""
    from PIL import Image

    with Image.open(path) as img:
        if img.width != img.height:
            raise ConfigError(f"{path}: tiles must be square, got {img.width}x{img.height}")
        return img.width


class TileStore:
    """Builds, once per (size, n), a tree of ``n`` tiles that every path reads.

    Sources: ``--data-root`` (its ``--split``/``--scenes``); else, at 1024 px, the real LoveDA
    sample (real PNG encodings, so real decode cost); else a generated mini-LoveDA in the work
    folder. Fewer source tiles than ``n`` are cycled (as symlinks: no extra disk). The tree
    always calls its split ``Val``, because torchgeo's datamodule validates on ``Val`` only.
    """

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self._sources: dict[int, tuple[list[tuple[Path, Path, str]], str]] = {}
        self._trees: dict[tuple[int, int], Tiles] = {}

    def sources(self, size: int) -> tuple[list[tuple[Path, Path, str]], str]:
        if size not in self._sources:
            self._sources[size] = self._find_sources(size)
        return self._sources[size]

    def _find_sources(self, size: int) -> tuple[list[tuple[Path, Path, str]], str]:
        from loveda_utils.data.dataset import LoveDASegmentation

        args = self.args
        if args.data_root:
            dataset = LoveDASegmentation(args.data_root, args.split, args.scenes)
            if not dataset.has_masks:
                raise ConfigError(
                    f"--split {args.split}: the evaluation is scored, so it needs masks; use "
                    "--split train or --split val"
                )
            pairs = [
                (Path(f["image"]), Path(f["mask"]), _scene_of(f["image"])) for f in dataset.files
            ]
            if not pairs:
                raise ConfigError(f"--data-root {args.data_root}: no {args.split} tiles found")
            found = png_size(pairs[0][0])
            if found != size:
                raise ConfigError(
                    f"--size {size} but the tiles under --data-root are {found} px "
                    f"({pairs[0][0]}); pass --size {found}"
                )
            return pairs, f"{args.data_root} ({dataset.split_dir}/{'+'.join(dataset.scene_dirs)})"
        sample = Path(args.sample_root) if args.sample_root else None
        if size == 1024 and sample is not None and (sample / "Train" / "Rural").is_dir():
            dataset = LoveDASegmentation(sample, "train", "rural")
            pairs = [(Path(f["image"]), Path(f["mask"]), "Rural") for f in dataset.files]
            if pairs and png_size(pairs[0][0]) == size:
                return pairs, f"real LoveDA sample ({len(pairs)} tiles, Train/Rural)"
        from loveda_utils.data.synthetic import generate_mini_loveda

        root = self.work / f"synthetic-{size}px"
        if not root.exists():
            progress(f"generating a synthetic mini-LoveDA at {size} px in {root} ...")
            generate_mini_loveda(root, tiles=4, size=size, seed=0)
        pairs = []
        for split in ("Train", "Val"):
            dataset = LoveDASegmentation(root, split, "both")
            pairs += [
                (Path(f["image"]), Path(f["mask"]), _scene_of(f["image"])) for f in dataset.files
            ]
        return pairs, f"synthetic mini-LoveDA ({len(pairs)} distinct tiles, seed 0)"

    def get(self, size: int, n: int) -> Tiles:
        """The tree of ``n`` tiles of ``size`` px (built on first use)."""
        if (size, n) in self._trees:
            return self._trees[(size, n)]
        pairs, source = self.sources(size)
        root = self.work / f"tiles-{size}px-{n}"
        if root.exists():  # left by an earlier run with the same --work-dir: rebuild it
            shutil.rmtree(root)
        scenes: list[str] = []
        for k in range(n):
            image, mask, scene = pairs[k % len(pairs)]
            if scene not in scenes:
                scenes.append(scene)
            for src, folder in ((image, "images_png"), (mask, "masks_png")):
                dst = root / "Val" / scene / folder / f"{k}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    dst.symlink_to(src.resolve())
                except OSError:  # filesystems without symlinks
                    shutil.copyfile(src, dst)
        if n > len(pairs):
            source += f", cycled to {n}"
        ordered = tuple(s for s in SCENES if s in scenes)
        tiles = Tiles(root, n, size, ordered, source)
        self._trees[(size, n)] = tiles
        return tiles


def _scene_of(image_path: str | Path) -> str:
    return Path(image_path).parent.parent.name
