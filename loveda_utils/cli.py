"""Command line: ``python -m loveda_utils <command> ...`` (``--help`` on each command).

Each command is a thin wrapper around a package function, so notebooks and tests call the same
code. Expected failures (bad data, unknown model, ...) print one clear message and exit non-zero,
without a traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import ConfigError, LoveDAError

if TYPE_CHECKING:
    from .training.recipe import Recipe

#: Errors of the disk a command writes to (a read-only folder, a full disk): one line, exit 2.
DISK_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})

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


# -- check-data / download-data ---------------------------------------------------------------

#: check-data's speed per tile, from ``benchmarks/check_data.py`` (README-ready; other hosts differ).
CHECK_SPEED = """\
speed (benchmarks/check_data.py on the 2-core development VM: real 1024 px LoveDA tiles,
files cached, one thread):
  --quick                 about 1 ms per tile (headers; masks decoded for their values):
                          the whole release (5,987 tiles) in about 6 s
  full (the default)      about 5 ms per tile (each image's MD5, which stands for decoding it
                          when it matches the release; each mask's class counts): about 30 s
  full --no-manifest      about 16 ms per tile (every image decoded): about 95 s"""


def _names(flag: str, values: Sequence[str], normalize: Callable[[str], Any], valid: Sequence[str]) -> list:
    """``--splits``/``--scenes`` values in the archive's spelling; a bad one is a one-line
    :class:`~loveda_utils.errors.ConfigError` naming the flag and the valid names (exit 2)."""
    names: list = []
    for value in values or [""]:
        try:
            normalized = normalize(value)
        except ValueError:
            raise ConfigError(f"{flag} {value!r}: use {', '.join(valid)} (comma-separated, any "
                              "case)") from None
        for name in normalized if isinstance(normalized, tuple) else (normalized,):
            if name not in names:
                names.append(name)
    return names


def _split_scene_args(p: argparse.ArgumentParser, scenes_note: str = "") -> None:
    from .data.classes import SCENES, SPLITS

    p.add_argument("--splits", type=_csv, default=list(SPLITS),
                   help=f"comma-separated splits (default: {','.join(SPLITS)})")
    p.add_argument("--scenes", type=_csv, default=list(SCENES),
                   help=f"comma-separated scenes{scenes_note} (default: {','.join(SCENES)})")


def _splits_and_scenes(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from .data.classes import SCENES, SPLITS, normalize_scenes, normalize_split

    return (_names("--splits", args.splits, normalize_split, SPLITS),
            _names("--scenes", args.scenes, normalize_scenes, (*SCENES, "both")))


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="pairing, PNG headers, mask values and tile placement only (no image "
                        "MD5s, no class counts)")
    p.add_argument("--complete", action="store_true",
                   help="also require every release tile of the splits and scenes checked")
    p.add_argument("--no-manifest", action="store_true",
                   help="do not compare with the LoveDA release manifest (for other data in "
                        "LoveDA's layout)")
    p.add_argument("--workers", type=int, default=None, help="threads checking tiles (default: CPUs)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = CHECK_SPEED


def _check_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="LoveDA root holding Train/, Val/, Test/")
    _split_scene_args(p)
    _check_args(p)


@command("check-data", "validate a LoveDA tree and compare it with the LoveDA release manifest "
         "(the synthetic mini-LoveDA is recognised and not compared)", _check_data_args)
def check_data(args: argparse.Namespace) -> int:
    from .data.validation import check_tree

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
    from .data.download import download_release

    splits, _ = _splits_and_scenes(args)  # refuse a bad name before downloading gigabytes
    download_release(args.root, splits)
    return check_data(args)


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
    p.add_argument("--data-root", default=None,
                   help="the LoveDA root the run predicted, whose images the predictions must "
                        "cover (default: data_root in RUN_DIR/config.yaml)")
    p.add_argument("--out", default=None, help="zip to write (default: RUN_DIR/submission.zip)")
    p.add_argument("--split", default="Test", help="which split's predictions (default: Test)")


def _run_data_root(run_dir: str) -> str:
    """The ``data_root`` a run folder's ``config.yaml`` names (every run writes one)."""
    from pathlib import Path

    from .training.recipe import CONFIG_FILE, read_run_config

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

    from .data.classes import SPLITS, normalize_split
    from .evaluation.submission import export_submission as export

    (split,) = _names("--split", [args.split], normalize_split, SPLITS)
    # A missing run folder is export's to report (it says how to make predictions).
    root = args.data_root or (_run_data_root(args.run_dir) if Path(args.run_dir).is_dir() else "")
    out = export(args.run_dir, root, out=args.out, split=split)
    print(f"submission written to {out} (checked against {root})")
    return 0



# -- report ------------------------------------------------------------------------------------


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
    from pathlib import Path

    from . import paths
    from .results.report import write_report
    from .results.store import check_output_folder, load_records

    results_dir = Path(args.results_dir) if args.results_dir else paths.RESULTS_DIR
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



# -- fetch-weights -----------------------------------------------------------------------------

_FETCH_LAYOUT = """\
A mirror (--mirror), a --to folder and a --from folder share one layout:
  <root>/torch/hub/checkpoints/<file>                torchvision and torchgeo files
  <root>/hf/<repo_id>/resolve/<revision>/<filename>  Hugging Face files (smp encoders)
  <root>/SHA256SUMS                                  optional checksums (sha256sum format)
so `python -m http.server` in a --to folder serves a mirror. Files go to
torch.hub.get_dir()/checkpoints ($TORCH_HOME) and the Hugging Face cache ($HF_HUB_CACHE, else
$HF_HOME/hub), where build_model reads them offline."""


def _fetch_weights_args(p: argparse.ArgumentParser) -> None:
    from .benchmark.suite import PROFILES

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _FETCH_LAYOUT
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--profile", choices=list(PROFILES), help="the models of a run-suite profile")
    which.add_argument("--models", type=_csv, help="comma-separated registry names")
    which.add_argument("--all", action="store_true", help="every registry model")
    p.add_argument("--pretrained", default="default",
                   help="the weights to fetch for each model: default (the entry's own), imagenet, "
                        "or a torchgeo weights name (default: default)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="no network: print what is present or missing; exit 1 if anything is")
    mode.add_argument("--mirror", metavar="URL", help="download from a mirror in the layout below")
    mode.add_argument("--to", metavar="DIR", help="copy the cached files to DIR (the layout below)")
    mode.add_argument("--from", dest="from_dir", metavar="DIR",
                      help="place the files from DIR (written by --to) into the caches")
    p.add_argument("--retries", type=int, default=2,
                   help="resume an interrupted download this many times (default 2)")


@command("fetch-weights", "download the pretrained weights of models into the caches "
         "build_model reads (or check, export, import them)", _fetch_weights_args)
def fetch_weights(args: argparse.Namespace) -> int:
    from .models import fetch
    from .models.registry import available_models

    if args.profile:
        from .benchmark.suite import get_profile

        names = list(get_profile(args.profile).models)
    else:
        names = available_models() if args.all else _model_names(args.models) or []
    files = fetch.needed_files(names, args.pretrained)
    if not files:
        print(f"nothing to fetch: pretrained={args.pretrained!r} needs no files for "
              f"{', '.join(names)}")
        return 0
    if args.check:
        reports = fetch.check(files)
        print(fetch.format_table(reports))
        if not all(r.ok for r in reports):
            print("fetch them: the same command without --check (with --mirror URL or --from DIR "
                  "where there is no internet)")
    else:
        if args.to:
            reports = fetch.export_files(files, args.to, log=print)
        elif args.from_dir:
            reports = fetch.import_files(files, args.from_dir, log=print)
        else:
            reports = fetch.fetch(files, args.mirror, retries=args.retries, log=print)
        print(fetch.summary(reports))
    return 0 if all(r.ok for r in reports) else 1



# -- run-suite / estimate / train --------------------------------------------------------------


def _settings(pairs: list[str]) -> dict:
    """``--set key=value`` pairs, each key a notebook parameter the suite does not set itself
    (checked before anything runs); values parsed as YAML (numbers, true/false, null, strings)."""
    import yaml

    from .benchmark.suite import check_overrides

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: use key=value, e.g. --set max_steps=300")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML; quote it, e.g. "
                              f"--set '{key.strip()}=\"{value}\"'") from None
    return check_overrides(out)


def _model_names(names: list[str] | None) -> list[str] | None:
    """``--models`` as given (None: not given); an empty list is refused, not read as "all"."""
    if names is not None and not names:
        raise ConfigError("--models: no model named; pass comma-separated registry names, e.g. "
                          "--models unet_resnet18,fpn_resnet50, or leave --models out")
    return names


def _suite_args(p: argparse.ArgumentParser) -> None:
    import os

    from .benchmark.suite import PROFILES
    from .paths import PROJECT_ROOT

    profiles = "; ".join(f"{name}: {prof.description}" for name, prof in PROFILES.items())
    folders = ", ".join(f"{name}: {os.path.relpath(prof.results_dir, PROJECT_ROOT)}/"
                        for name, prof in PROFILES.items())
    p.add_argument("--profile", default="quick", choices=list(PROFILES),
                   help=f"{profiles} (default quick)")
    p.add_argument("--models", type=_csv, default=None, help="comma-separated registry names (default: the profile's)")
    p.add_argument("--data-root", default=None, help="LoveDA root (default: $LOVEDA_ROOT, else the mini-LoveDA)")
    p.add_argument("--results-dir", default=None,
                   help=f"where runs/, the table and the comparison go (default: the profile's; {folders})")
    p.add_argument("--set", dest="settings", action="append", metavar="KEY=VALUE",
                   help="override a notebook parameter for every model (repeatable)")


def _run_suite_args(p: argparse.ArgumentParser) -> None:
    _suite_args(p)
    p.add_argument("--force", action="store_true", help="run models that already have a record again")
    p.add_argument("--gpus", type=_csv, default=None,
                   help="CUDA device ids to spread models over (default: all visible; none on CPU)")
    p.add_argument("--no-render", action="store_true", help="skip the table and the comparison notebook")
    p.add_argument("--no-readme", action="store_true",
                   help="write the table but leave every README alone (by default the repository's "
                        "README gets the table when the results are the repository's own results/)")
    check = p.add_argument_group(
        "pre-flight", "before the first model starts, run-suite checks the data, weights, GPU, GPU "
        "memory, disk and results folder, prints one table and refuses to start (exit 2) with "
        "every fix listed")
    which = check.add_mutually_exclusive_group()
    which.add_argument("--check", action="store_true",
                       help="only the pre-flight: print the table; exit 0 if it passes, 2 if not")
    which.add_argument("--skip-check", action="store_true", help="start without the pre-flight")
    check.add_argument("--allow-cpu", action="store_true",
                       help="let a GPU profile (mmseg) train on the CPU when no GPU is visible")
    check.add_argument("--allow-memory", action="store_true",
                       help="start although a model's estimated GPU memory exceeds the device")
    cluster = p.add_argument_group(
        "cluster", "--launcher slurm: one SLURM job per model (a job array through submitit), "
        "each requeued after a time limit or preemption and resumed from its last.ckpt; this "
        "process waits for them and builds the report (README, \"Running the benchmark\")")
    cluster.add_argument("--launcher", choices=("local", "slurm"), default="local",
                         help="local: here, one model per GPU (default); slurm: cluster jobs")
    cluster.add_argument("--partition", help="sbatch --partition")
    cluster.add_argument("--account", help="sbatch --account")
    cluster.add_argument("--qos", help="sbatch --qos")
    cluster.add_argument("--constraint", help="sbatch --constraint (node features, e.g. a100)")
    cluster.add_argument("--time", type=int, default=24 * 60, metavar="MINUTES",
                         help="time limit per job in minutes; longer runs are requeued (default 1440)")
    cluster.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per job (default 1)")
    cluster.add_argument("--cpus-per-job", type=int, default=None,
                         help="CPUs per job, for the data loaders (default: the partition's)")
    cluster.add_argument("--mem-gb", type=float, default=None,
                         help="host memory per job in GB (default: the partition's)")
    cluster.add_argument("--max-parallel", type=int, default=None,
                         help="jobs of the array running at once (default: all)")
    cluster.add_argument("--max-requeues", type=int, default=3,
                         help="requeues after time limits before a job gives up (default 3)")
    cluster.add_argument("--setup", action="append", default=[], metavar="SHELL_LINE",
                         help="a line the job script runs first, e.g. 'module load cuda' (repeatable)")
    cluster.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                         help="another #SBATCH --KEY=VALUE line, e.g. --sbatch mail-type=END (repeatable)")


def _slurm_options(args: argparse.Namespace):
    from .benchmark.launch import SlurmOptions

    extra = {}
    for pair in args.sbatch:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--sbatch {pair!r}: use KEY=VALUE, e.g. --sbatch mail-type=END")
        extra[key.strip().lstrip("-")] = value
    return SlurmOptions(partition=args.partition, account=args.account, qos=args.qos,
                        constraint=args.constraint, time_min=args.time,
                        gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job,
                        mem_gb=args.mem_gb, max_parallel=args.max_parallel,
                        max_requeues=args.max_requeues, setup=tuple(args.setup), sbatch=extra)


@command("run-suite", "run 03_benchmark.ipynb once per model (papermill), then the comparison", _run_suite_args)
def run_suite(args: argparse.Namespace) -> int:
    from .benchmark.launch import ClusterLauncher
    from .benchmark.suite import run_suite as suite

    launcher = ClusterLauncher(_slurm_options(args)) if args.launcher == "slurm" else None
    models, overrides = _model_names(args.models), _settings(args.settings)
    if args.check:
        from .benchmark.devices import cuda_devices
        from .benchmark.preflight import preflight
        from .benchmark.suite import check_overrides, results_dir_for
        from .data.root import resolve_data_root

        overrides = check_overrides(overrides)
        root = resolve_data_root(args.data_root)
        results = results_dir_for(args.profile, args.results_dir, root)
        report = preflight(args.profile, models, root, results, force=args.force,
                           overrides=overrides,
                           devices=None if launcher else cuda_devices(args.gpus),
                           devices_on_nodes=launcher is not None, allow_cpu=args.allow_cpu,
                           allow_memory=args.allow_memory)
        print(report.format())
        return 0 if report.ok else 2
    result = suite(args.profile, models, args.data_root, args.results_dir, force=args.force,
                   overrides=overrides, gpus=args.gpus, render=not args.no_render,
                   readme=not args.no_readme, check=not args.skip_check,
                   allow_cpu=args.allow_cpu, allow_memory=args.allow_memory, launcher=launcher)
    return result.exit_code


def _estimate_args(p: argparse.ArgumentParser) -> None:
    _suite_args(p)
    p.add_argument("--steps", type=int, default=6, help="training iterations to time per model (default 6)")


@command("estimate", "time a few iterations per model and project the whole schedule", _estimate_args)
def estimate(args: argparse.Namespace) -> int:
    from .benchmark.estimate import estimate as run_estimate

    table = run_estimate(args.profile, _model_names(args.models), args.data_root, steps=args.steps,
                         overrides=_settings(args.settings))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 1 if "error" in table and table["error"].notna().any() else 0


#: The ``train`` command's run parameters beside the recipe, with their defaults.
TRAIN_DEFAULTS = {"model": None, "data_root": None, "accelerator": "auto", "devices": "auto",
                  "strategy": "auto", "num_nodes": 1, "num_workers": None, "seed": 0,
                  "allow_cpu": False}


def _train_args(p: argparse.ArgumentParser) -> None:
    from .training.recipe import MMSEG, OPTIMIZERS, RECIPES, recipe_field_types

    p.add_argument("--model", default=None, help="a registry name (required unless --config gives it)")
    p.add_argument("--run-dir", required=True,
                   help="folder for checkpoints and logs, created if missing (resumes its last.ckpt); "
                        "refused while another live train or run holds it")
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
    p.add_argument("--allow-cpu", action="store_true", default=None,
                   help="train a GPU recipe's full schedule (mmseg) on the CPU all the same")


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
    if isinstance(params["devices"], str) and params["devices"].lstrip("-").isdigit():
        params["devices"] = int(params["devices"])
    if not params["model"]:
        raise ConfigError("--model: missing; pass a registry name, or --config with a run's config.yaml")
    _check_train_params(params)
    return recipe, params


#: ``train``'s integer parameters: (flag, lowest value, highest value or None).
_TRAIN_INTS = {"num_nodes": ("--num-nodes", 1, None), "num_workers": ("--num-workers", 0, None),
               "seed": ("--seed", 0, 2**32 - 1)}  # numpy seeds 0..2**32-1


def _check_train_params(params: dict[str, Any]) -> None:
    """Refuse what Lightning or numpy would refuse with a traceback, naming the flag."""
    for key, (flag, low, high) in _TRAIN_INTS.items():
        value = params[key]
        if value is None:
            continue
        bad = not isinstance(value, int) or isinstance(value, bool) or value < low
        if bad or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise ConfigError(f"{flag} {value!r}: must be an integer {bounds}")
    devices = params["devices"]
    if isinstance(devices, int) and (devices == 0 or devices < -1):
        raise ConfigError(f"--devices {devices}: use a positive count, -1 (all), a list such as "
                          "0,1, or auto")


@command("train", "train one model with Lightning (multi-GPU/multi-node with --strategy ddp)", _train_args)
def train(args: argparse.Namespace) -> int:
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_only
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .data.root import resolve_data_root
    from .results.store import check_output_folder, claim_folder
    from .training.checkpoint import last_checkpoint_path
    from .training.recipe import CONFIG_FILE, write_run_config
    from .training.trainer import build_datamodule, fit

    recipe, params = train_settings(args)
    rank_zero = getattr(rank_zero_only, "rank", 0) == 0  # DDP starts this command once per process
    # The folder is the user's (any path, links followed); it must be, or become, a writable
    # folder, and one train at a time: rank 0 holds its claim until the process ends.
    run_dir = claim_folder(args.run_dir) if rank_zero else check_output_folder(args.run_dir, "--run-dir")
    root = resolve_data_root(params["data_root"])
    L.seed_everything(params["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(recipe, root, num_workers=params["num_workers"], seed=params["seed"])
    if rank_zero:
        rerun = f"python -m loveda_utils train --config {run_dir / CONFIG_FILE} --run-dir NEW_RUN_DIR"
        write_run_config(run_dir, recipe, params | {"data_root": str(root)}, rerun=rerun)
    try:
        outcome = fit(recipe, datamodule, run_dir, model=params["model"],
                      accelerator=params["accelerator"], devices=params["devices"],
                      strategy=params["strategy"], num_nodes=params["num_nodes"],
                      allow_cpu=params["allow_cpu"])
    except KeyboardInterrupt as exc:  # fit saved the steps done and says where
        print(f"interrupted: {exc or 'training stopped'}; the same command resumes", file=sys.stderr)
        return 130
    except SIGTERMException:
        print(f"stopped by SIGTERM: {last_checkpoint_path(run_dir)} holds the steps done; the same "
              "command resumes", file=sys.stderr)
        return 143
    trainer = outcome.trainer
    if trainer is not None and trainer.global_rank == 0:
        print(f"trained {params['model']} to step {outcome.steps} on {trainer.world_size} process(es); "
              f"checkpoint: {outcome.checkpoint}")
    return 0


# -- compare -----------------------------------------------------------------------------------


def _compare_args(p: argparse.ArgumentParser) -> None:
    from .evaluation.bootstrap import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

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
    from .results.compare import compare_runs, format_comparison

    comparison = compare_runs(args.run_a, args.run_b, ms_flip=args.ms_flip,
                              resamples=args.resamples, seed=args.seed, level=args.level)
    print(format_comparison(comparison))
    return 0


# -- entry point -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Argument errors (an invalid choice, a missing flag) as one line, like the commands' own."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m loveda_utils", description=__doc__.splitlines()[0])
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
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        where = exc.filename if exc.filename is not None else "a file"
        print(f"error: cannot write {where}: {exc.strerror}; use a folder you can write in (or fix "
              "its permissions, or free space)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
