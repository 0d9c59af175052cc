"""Command line: ``python -m loveda_utils <command> ...`` (``--help`` on each command).

Each command is a thin wrapper around a package function, so notebooks and tests call the same
code. Expected failures (bad data, unknown model, ...) print one clear message and exit non-zero,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import LoveDAError

if TYPE_CHECKING:
    from .training.recipe import Recipe

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
    from .data.validation import check_tree

    report = check_tree(args.root, args.splits, args.scenes,
                        level="quick" if args.quick else "full", workers=args.workers)
    print(report.format())
    return 0 if report.ok else 1



# -- make-synthetic ----------------------------------------------------------------------------


def _make_synthetic_args(p: argparse.ArgumentParser) -> None:
    from .data.synthetic import DEFAULT_SEED, DEFAULT_SIZE, DEFAULT_TILES

    p.add_argument("out", help="folder to write the mini-LoveDA tree into")
    p.add_argument("--tiles", type=int, default=DEFAULT_TILES,
                   help=f"Train tiles per scene; Val gets half, Test a quarter (default {DEFAULT_TILES})")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"tile side in px (default {DEFAULT_SIZE})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing tree")


@command("make-synthetic", "write a synthetic mini-LoveDA in the released layout", _make_synthetic_args)
def make_synthetic(args: argparse.Namespace) -> int:
    from .data.synthetic import generate_mini_loveda

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
    from .evaluation.submission import export_submission as export

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
    from .results.records import load_records, write_report

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



# -- run-suite / estimate / train --------------------------------------------------------------


def _settings(pairs: list[str]) -> dict:
    """``--set key=value`` pairs; values parsed as YAML (numbers, true/false, null, strings)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {pair!r}: use key=value, e.g. --set max_steps=300")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _suite_args(p: argparse.ArgumentParser) -> None:
    from .benchmark.suite import PROFILES

    p.add_argument("--profile", default="quick", choices=list(PROFILES),
                   help="quick: CPU demo on mini-LoveDA; mmseg: MMSeg's protocol on a GPU (default quick)")
    p.add_argument("--models", type=_csv, default=None, help="comma-separated registry names (default: the profile's)")
    p.add_argument("--data-root", default=None, help="LoveDA root (default: $LOVEDA_ROOT, else the mini-LoveDA)")
    p.add_argument("--results-dir", default=None, help="where runs/ and the table go (default: results/)")
    p.add_argument("--set", dest="settings", action="append", metavar="KEY=VALUE",
                   help="override a notebook parameter for every model (repeatable)")


def _run_suite_args(p: argparse.ArgumentParser) -> None:
    _suite_args(p)
    p.add_argument("--force", action="store_true", help="run models that already have a record again")
    p.add_argument("--gpus", type=_csv, default=None,
                   help="CUDA device ids to spread models over (default: all visible; none on CPU)")
    p.add_argument("--no-render", action="store_true", help="skip the table and the comparison notebook")


@command("run-suite", "run 03_benchmark.ipynb once per model (papermill), then the comparison", _run_suite_args)
def run_suite(args: argparse.Namespace) -> int:
    from .benchmark.suite import run_suite as suite

    result = suite(args.profile, args.models, args.data_root, args.results_dir, force=args.force,
                   overrides=_settings(args.settings), gpus=args.gpus, render=not args.no_render)
    return result.exit_code


def _estimate_args(p: argparse.ArgumentParser) -> None:
    _suite_args(p)
    p.add_argument("--steps", type=int, default=6, help="training iterations to time per model (default 6)")


@command("estimate", "time a few iterations per model and project the whole schedule", _estimate_args)
def estimate(args: argparse.Namespace) -> int:
    from .benchmark.estimate import estimate as run_estimate

    table = run_estimate(args.profile, args.models, args.data_root, steps=args.steps,
                         overrides=_settings(args.settings))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 1 if "error" in table and table["error"].notna().any() else 0


#: The ``train`` command's run parameters beside the recipe, with their defaults.
TRAIN_DEFAULTS = {"model": None, "data_root": None, "accelerator": "auto", "devices": "auto",
                  "strategy": "auto", "num_nodes": 1, "num_workers": None, "seed": 0}


def _train_args(p: argparse.ArgumentParser) -> None:
    from .training.recipe import MMSEG, OPTIMIZERS, RECIPES, recipe_field_types

    p.add_argument("--model", default=None, help="a registry name (required unless --config gives it)")
    p.add_argument("--run-dir", required=True, help="folder for checkpoints and logs (resumes its last.ckpt)")
    p.add_argument("--config", default=None, metavar="CONFIG_YAML",
                   help="rerun a run: its config.yaml (recipe and parameters); flags given override it")
    p.add_argument("--data-root", default=None)
    p.add_argument("--recipe", default=None, choices=list(RECIPES),
                   help="the named training recipe the flags below override (default mmseg)")
    helps = {"batch_size": "per device", "precision": "a Lightning precision such as 16-mixed; None: the runtime's AMP policy",
             "pretrained": '"default", "none", "imagenet", a torchgeo weights name or a state-dict file'}
    for name, kind in recipe_field_types().items():
        default = getattr(MMSEG, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                       choices=list(OPTIMIZERS) if name == "optimizer" else None,
                       help=f"{helps.get(name, 'recipe field')} (default: the recipe's; mmseg: {default})")
    p.add_argument("--accelerator", default=None, help="default auto")
    p.add_argument("--devices", default=None, help="e.g. 4, or 0,1 (default auto)")
    p.add_argument("--strategy", default=None, help="e.g. ddp (default auto)")
    p.add_argument("--num-nodes", type=int, default=None, help="default 1")
    p.add_argument("--num-workers", type=int, default=None, help="default: one per core, see the data module")
    p.add_argument("--seed", type=int, default=None, help="default 0")


def train_settings(args: argparse.Namespace) -> tuple[Recipe, dict[str, Any]]:
    """The recipe and run parameters ``train`` runs with: the flags given, over ``--config``'s
    file, over the named recipe and :data:`TRAIN_DEFAULTS`."""
    from .errors import ConfigError
    from .training.recipe import RECIPE_PARAMETER, Recipe, read_run_config

    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("run_dir", "config", "func", "command")}
    recipe_params: dict[str, Any] = {}
    params = dict(TRAIN_DEFAULTS)
    if args.config:
        recipe, stored = read_run_config(args.config)
        params.update({k: v for k, v in stored.items() if k in TRAIN_DEFAULTS})
        if RECIPE_PARAMETER not in given:  # a recipe named on the command line starts afresh
            recipe_params = recipe.to_params()
    recipe = Recipe.from_params(recipe_params | given)
    params.update({k: v for k, v in given.items() if k in TRAIN_DEFAULTS})
    if isinstance(params["devices"], str) and params["devices"].isdigit():
        params["devices"] = int(params["devices"])
    if not params["model"]:
        raise ConfigError("--model: missing; pass a registry name, or --config with a run's config.yaml")
    return recipe, params


@command("train", "train one model with Lightning (multi-GPU/multi-node with --strategy ddp)", _train_args)
def train(args: argparse.Namespace) -> int:
    from pathlib import Path

    import lightning as L
    from lightning.pytorch.utilities import rank_zero_only

    from .data.root import resolve_data_root
    from .training.recipe import CONFIG_FILE, write_run_config
    from .training.trainer import build_datamodule, fit

    recipe, params = train_settings(args)
    run_dir = Path(args.run_dir)
    root = resolve_data_root(params["data_root"])
    L.seed_everything(params["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(recipe, root, num_workers=params["num_workers"], seed=params["seed"])
    if getattr(rank_zero_only, "rank", 0) == 0:  # DDP starts this command once per process
        run_dir.mkdir(parents=True, exist_ok=True)
        rerun = f"python -m loveda_utils train --config {run_dir / CONFIG_FILE} --run-dir NEW_RUN_DIR"
        write_run_config(run_dir, recipe, params | {"data_root": str(root)}, rerun=rerun)
    outcome = fit(recipe, datamodule, run_dir, model=params["model"], accelerator=params["accelerator"],
                  devices=params["devices"], strategy=params["strategy"], num_nodes=params["num_nodes"])
    trainer = outcome.trainer
    if trainer is not None and trainer.global_rank == 0:
        print(f"trained {params['model']} to step {outcome.steps} on {trainer.world_size} process(es); "
              f"checkpoint: {outcome.checkpoint}")
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
