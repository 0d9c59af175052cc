"""``run-suite`` and ``estimate``: the benchmark over a profile's models."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .common import comma_list, command, model_names, suite_settings


def _suite_args(p: argparse.ArgumentParser) -> None:
    import os

    from ..benchmark.profiles import PROFILES
    from ..paths import PROJECT_ROOT

    profiles = "; ".join(f"{name}: {prof.description}" for name, prof in PROFILES.items())
    folders = ", ".join(f"{name}: {os.path.relpath(prof.results_dir, PROJECT_ROOT)}/"
                        for name, prof in PROFILES.items())
    p.add_argument("--profile", default="quick", choices=list(PROFILES),
                   help=f"{profiles} (default quick)")
    p.add_argument("--models", type=comma_list, default=None, help="comma-separated registry names (default: the profile's)")
    p.add_argument("--data-root", default=None, help="LoveDA root (default: $LOVEDA_ROOT, else the mini-LoveDA)")
    p.add_argument("--results-dir", default=None,
                   help=f"where runs/, the table and the comparison go (default: the profile's; {folders})")
    p.add_argument("--set", dest="settings", action="append", metavar="KEY=VALUE",
                   help="override a notebook parameter for every model (repeatable)")


def _run_suite_args(p: argparse.ArgumentParser) -> None:
    _suite_args(p)
    p.add_argument("--force", action="store_true", help="run models that already have a record again")
    p.add_argument("--gpus", type=comma_list, default=None,
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
    from ..benchmark.launch import SlurmOptions

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
    from ..benchmark.launch import ClusterLauncher
    from ..benchmark.suite import run_suite as suite

    launcher = ClusterLauncher(_slurm_options(args)) if args.launcher == "slurm" else None
    models, overrides = model_names(args.models), suite_settings(args.settings)
    if args.check:
        from ..benchmark.devices import cuda_devices
        from ..benchmark.preflight import preflight
        from ..benchmark.profiles import results_dir_for
        from ..benchmark.suite import check_overrides
        from ..data.root import resolve_data_root

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
    from ..benchmark.estimate import estimate as run_estimate

    table = run_estimate(args.profile, model_names(args.models), args.data_root, steps=args.steps,
                         overrides=suite_settings(args.settings))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 1 if "error" in table and table["error"].notna().any() else 0
