"""``check-data``, ``download-data`` and ``make-synthetic``: a LoveDA tree, checked, downloaded or generated."""

from __future__ import annotations

import argparse

from .common import checked_names, comma_list, command, integer_at_least

#: check-data's speed per tile, from ``benchmarks/check_data.py`` (README-ready; other hosts differ).
CHECK_SPEED = """\
speed (benchmarks/check_data.py on the 2-core development VM: real 1024 px LoveDA tiles,
files cached, one thread):
  --quick                 about 1 ms per tile (headers; masks decoded for their values):
                          the whole release (5,987 tiles) in about 6 s
  full (the default)      about 5 ms per tile (each image's MD5, which stands for decoding it
                          when it matches the release; each mask's class counts): about 30 s
  full --no-manifest      about 16 ms per tile (every image decoded): about 95 s"""


def _split_scene_args(p: argparse.ArgumentParser, scenes_note: str = "") -> None:
    from ..data.classes import SCENES, SPLITS

    p.add_argument("--splits", type=comma_list, default=list(SPLITS),
                   help=f"comma-separated splits (default: {','.join(SPLITS)})")
    p.add_argument("--scenes", type=comma_list, default=list(SCENES),
                   help=f"comma-separated scenes{scenes_note} (default: {','.join(SCENES)})")


def _splits_and_scenes(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from ..data.classes import SCENES, SPLITS, normalize_scenes, normalize_split

    return (checked_names("--splits", args.splits, normalize_split, SPLITS),
            checked_names("--scenes", args.scenes, normalize_scenes, (*SCENES, "both")))


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="pairing, PNG headers, mask values and tile placement only (no image "
                        "MD5s, no class counts)")
    p.add_argument("--complete", action="store_true",
                   help="also require every release tile of the splits and scenes checked")
    p.add_argument("--no-manifest", action="store_true",
                   help="do not compare with the LoveDA release manifest (for other data in "
                        "LoveDA's layout)")
    p.add_argument("--workers", type=integer_at_least(1), default=None,
                   help="threads checking tiles (default: CPUs)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = CHECK_SPEED


def _check_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="LoveDA root holding Train/, Val/, Test/")
    _split_scene_args(p)
    _check_args(p)


@command("check-data", "validate a LoveDA tree and compare it with the LoveDA release manifest "
         "(the synthetic mini-LoveDA is recognised and not compared)", _check_data_args)
def check_data(args: argparse.Namespace) -> int:
    from ..data.validation import check_tree

    splits, scenes = _splits_and_scenes(args)
    report = check_tree(args.root, splits, scenes,
                        level="quick" if args.quick else "full", workers=args.workers,
                        release=not args.no_manifest, complete=args.complete)
    print(report.format())
    return 0 if report.ok else 1


def _download_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="folder to download and extract the LoveDA zips into")
    _split_scene_args(p, " to check afterwards (each zip holds both)")
    _check_args(p)


@command("download-data", "download the LoveDA release zips through torchgeo (progress, MD5 "
         "check), extract them, then check the tree like check-data", _download_data_args)
def download_data(args: argparse.Namespace) -> int:
    from ..data.download import download_release

    splits, _ = _splits_and_scenes(args)  # refuse a bad name before downloading gigabytes
    download_release(args.root, splits)
    return check_data(args)


def _make_synthetic_args(p: argparse.ArgumentParser) -> None:
    from ..data.synthetic import DEFAULT_SEED, DEFAULT_SIZE, DEFAULT_TILES

    p.add_argument("out", help="folder to write the mini-LoveDA tree into")
    p.add_argument("--tiles", type=int, default=DEFAULT_TILES,
                   help=f"Train tiles per scene; Val gets half, Test a quarter (default {DEFAULT_TILES})")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"tile side in px (default {DEFAULT_SIZE})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing tree")


@command("make-synthetic", "write a synthetic mini-LoveDA in the released layout", _make_synthetic_args)
def make_synthetic(args: argparse.Namespace) -> int:
    from ..data.synthetic import generate_mini_loveda

    out = generate_mini_loveda(args.out, tiles=args.tiles, size=args.size, seed=args.seed,
                               overwrite=args.overwrite)
    print(f"mini-LoveDA (synthetic, not real LoveDA) written to {out}")
    return 0
