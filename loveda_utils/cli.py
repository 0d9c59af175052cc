"""Command line: ``python -m loveda_utils <command> ...`` (``--help`` on each command).

Each command is a thin wrapper around a package function, so notebooks and tests call the same
code. Expected failures (bad data, unknown model, ...) print one clear message and exit non-zero,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import LoveDAError

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args) -> exit code`` as a sub-command; ``arguments(parser)`` adds its flags."""

    def register(fn: Command) -> Command:
        COMMANDS[name] = (fn, arguments, help)
        return fn

    return register


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# -- check-data --------------------------------------------------------------------------------


def _check_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="LoveDA root holding Train/, Val/, Test/")
    p.add_argument("--splits", type=_csv, default=["Train", "Val", "Test"],
                   help="comma-separated splits to check (default: Train,Val,Test)")
    p.add_argument("--scenes", type=_csv, default=["Urban", "Rural"],
                   help="comma-separated scenes to check (default: Urban,Rural)")
    p.add_argument("--quick", action="store_true",
                   help="pairing and PNG headers only (skip decoding every file)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPUs)")


@command("check-data", "validate a LoveDA tree and print a readable report", _check_data_args)
def check_data(args: argparse.Namespace) -> int:
    from .validation import check_tree

    report = check_tree(args.root, args.splits, args.scenes,
                        level="quick" if args.quick else "full", workers=args.workers)
    print(report.format())
    return 0 if report.ok else 1



# -- make-synthetic ----------------------------------------------------------------------------


def _make_synthetic_args(p: argparse.ArgumentParser) -> None:
    from .synthetic import DEFAULT_SEED, DEFAULT_SIZE, DEFAULT_TILES

    p.add_argument("out", help="folder to write the mini-LoveDA tree into")
    p.add_argument("--tiles", type=int, default=DEFAULT_TILES,
                   help=f"Train tiles per scene; Val gets half, Test a quarter (default {DEFAULT_TILES})")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"tile side in px (default {DEFAULT_SIZE})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing tree")


@command("make-synthetic", "write a synthetic mini-LoveDA in the released layout", _make_synthetic_args)
def make_synthetic(args: argparse.Namespace) -> int:
    from .synthetic import generate_mini_loveda

    out = generate_mini_loveda(args.out, tiles=args.tiles, size=args.size, seed=args.seed,
                               overwrite=args.overwrite)
    print(f"mini-LoveDA (synthetic, not real LoveDA) written to {out}")
    return 0



# -- export-submission -------------------------------------------------------------------------


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder holding predictions/<Split>/<Scene>/*.png")
    p.add_argument("--out", default=None, help="zip to write (default: RUN_DIR/submission.zip)")
    p.add_argument("--split", default="Test", help="which split's predictions (default: Test)")


@command("export-submission", "zip a run's predictions for the LoveDA evaluation server", _export_args)
def export_submission(args: argparse.Namespace) -> int:
    from .submission import export_submission as export

    out = export(args.run_dir, out=args.out, split=args.split)
    print(f"submission written to {out}")
    return 0



# -- report ------------------------------------------------------------------------------------


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results-dir", default=None,
                   help="folder holding runs/*/metrics.json (default: results/ in the repository)")
    readme = p.add_mutually_exclusive_group()
    readme.add_argument("--readme", default=None,
                        help="README whose section between <!-- results:start --> and "
                             "<!-- results:end --> gets the table (default: the repository's "
                             "README.md, skipped when absent)")
    readme.add_argument("--no-readme", action="store_true", help="leave every README alone")


@command("report", "rebuild the results table (benchmark.md/.csv) and the README section from the "
         "run records", _report_args)
def report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import paths
    from .results import load_records, write_report

    results_dir = Path(args.results_dir) if args.results_dir else paths.RESULTS_DIR
    if not results_dir.is_dir():
        print(f"error: results dir {results_dir} does not exist; run the benchmark first "
              "(python -m loveda_utils run-suite) or pass --results-dir", file=sys.stderr)
        return 2
    readme = None
    if args.readme:
        readme = Path(args.readme)  # an explicit README must exist and hold the markers
    elif not args.no_readme:
        readme = paths.PROJECT_ROOT / "README.md"
        if not readme.is_file():
            print(f"note: {readme} not found; only the results folder is updated", file=sys.stderr)
            readme = None
    written = write_report(results_dir, readme=readme)
    print(written["markdown"].read_text(encoding="utf-8"))
    for problem in load_records(results_dir)[1]:
        print(f"damaged record: {problem}", file=sys.stderr)
    print("written: " + ", ".join(str(p) for p in written.values()))
    return 0



# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loveda_utils", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (fn, add_arguments, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_arguments(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LoveDAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
