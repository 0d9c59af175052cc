"""``export-submission``, ``report`` and ``compare``: what a run's records and predictions become."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .common import checked_names, command


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder holding predictions/<Split>/<Scene>/*.png")
    p.add_argument("--data-root", default=None,
                   help="the LoveDA root the run predicted, whose images the predictions must "
                        "cover (default: data_root in RUN_DIR/config.yaml)")
    p.add_argument("--out", default=None, help="zip to write (default: RUN_DIR/submission.zip)")
    p.add_argument("--split", default="Test", help="which split's predictions (default: Test)")


def _run_data_root(run_dir: str) -> str:
    """The ``data_root`` a run folder's ``config.yaml`` names (every run writes one)."""
    from pathlib import Path

    from ..training.recipe import CONFIG_FILE, read_run_config

    config = Path(run_dir) / CONFIG_FILE
    if not config.is_file():
        raise ConfigError(f"run_dir {run_dir}: no {CONFIG_FILE} to read the data root from; pass "
                          "--data-root (the LoveDA root the run predicted), or a run folder "
                          "written by notebooks/03_benchmark.ipynb or train")
    root = read_run_config(config)[1].get("data_root")
    if not root:
        raise ConfigError(f"{config} names no data_root; pass --data-root (the LoveDA root the "
                          "run predicted)")
    return str(root)


@command("export-submission", "check a run's predictions against the split's images and zip them "
         "for the LoveDA evaluation server", _export_args)
def export_submission(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data.classes import SPLITS, normalize_split
    from ..evaluation.submission import export_submission as export

    (split,) = checked_names("--split", [args.split], normalize_split, SPLITS)
    # A missing run folder is export's to report (it says how to make predictions).
    root = args.data_root or (_run_data_root(args.run_dir) if Path(args.run_dir).is_dir() else "")
    out = export(args.run_dir, root, out=args.out, split=split)
    print(f"submission written to {out} (checked against {root})")
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results-dir", default=None,
                   help="folder holding runs/*/metrics.json (default: results/ in the repository)")
    readme = p.add_mutually_exclusive_group()
    readme.add_argument("--readme", default=None,
                        help="README whose section between <!-- results:start --> and "
                             "<!-- results:end --> gets the table (default: the repository's "
                             "README.md, only for the repository's own results/)")
    readme.add_argument("--no-readme", action="store_true", help="leave every README alone")


@command("report", "rebuild the results table (benchmark.md/.csv) and, for the repository's own "
         "results/, the README section from the run records", _report_args)
def report(args: argparse.Namespace) -> int:
    from .. import paths
    from ..results.report import write_report
    from ..results.store import check_output_folder, load_records

    # An empty --results-dir is refused, not read as "the repository's results/" (its README).
    results_dir = (paths.RESULTS_DIR if args.results_dir is None
                   else check_output_folder(args.results_dir, "--results-dir"))
    check_output_folder(results_dir, "--results-dir")  # a file, or not writable: the table can't go there
    if not results_dir.is_dir():
        raise ConfigError(f"--results-dir {results_dir} does not exist; run the benchmark first "
                          "(python -m loveda_utils run-suite) or pass --results-dir")
    written = write_report(results_dir, readme=not args.no_readme, readme_path=args.readme)
    print(written["markdown"].read_text(encoding="utf-8"))
    for problem in load_records(results_dir)[1]:
        print(f"damaged record in {results_dir}: {problem}", file=sys.stderr)
    if not args.no_readme and "readme" not in written:
        print(f"note: no README updated: the repository's README shows only {paths.RESULTS_DIR} "
              "(when present); pass --readme FILE for another README", file=sys.stderr)
    print("written: " + ", ".join(str(p) for p in written.values()))
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    from ..evaluation.bootstrap import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

    p.add_argument("run_a", help="run folder A (holding per_tile_confusion.npz)")
    p.add_argument("run_b", help="run folder B; the differences printed are B - A")
    p.add_argument("--ms-flip", action="store_true", help="compare the ms+flip evaluations")
    p.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES,
                   help=f"bootstrap resamples (default {BOOTSTRAP_RESAMPLES})")
    p.add_argument("--seed", type=int, default=BOOTSTRAP_SEED,
                   help=f"bootstrap seed (default {BOOTSTRAP_SEED})")
    p.add_argument("--level", type=float, default=BOOTSTRAP_LEVEL,
                   help=f"interval coverage (default {BOOTSTRAP_LEVEL})")


@command("compare", "paired bootstrap over the tiles two runs evaluated: mIoU and per-class "
         "IoU differences (B - A) with their intervals", _compare_args)
def compare(args: argparse.Namespace) -> int:
    from ..evaluation.bootstrap import BootstrapSettings
    from ..results.compare import compare_runs, format_comparison

    settings = BootstrapSettings(args.resamples, args.seed, args.level)  # a ConfigError names it
    comparison = compare_runs(args.run_a, args.run_b, ms_flip=args.ms_flip, settings=settings)
    print(format_comparison(comparison))
    return 0
