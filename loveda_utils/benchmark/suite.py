"""The benchmark suite: ``03_benchmark.ipynb`` through papermill once per model, then the report.

The profiles (which models, which recipe, which parameters) are in
:mod:`loveda_utils.benchmark.profiles`.

A failing model does not stop the suite; finished ones are skipped on a re-run unless
``force``; an unfinished run folder (no record) is resumed (with ``force``: a fresh folder is
claimed instead); records never overwrite each other.
With several GPUs, models run in parallel, one per device.

Each model's folder is claimed when the suite plans (``loveda_utils/results/store.py``) and held
until its notebook ends; the notebook, a child process, takes over the claim
(:meth:`~loveda_utils.results.store.RunClaim.child_env`). A second suite on the same results
folder meanwhile takes the next folder of each model (``-r2``, ...), never the same one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..data.classes import normalize_scenes
from ..data.root import resolve_data_root
from ..data.synthetic import is_synthetic
from ..errors import ConfigError, PreflightError
from ..models.registry import get_spec
from ..paths import NOTEBOOKS_DIR, PROJECT_ROOT
from ..results.report import render_comparison, write_report
from ..results.store import (
    METRICS_FILE,
    NOTEBOOK_FILE,
    check_output_folder,
    claim_run_dir,
    completed_runs,
    held_claim,
    release_run_dir,
    run_group_for,
)
from ..runtime import CORES_ENV, available_cores
from ..training.recipe import Recipe
from .config import BenchmarkConfig, absolute_paths, parameter_defaults
from .profiles import Profile, get_profile, results_dir_for

if TYPE_CHECKING:
    from .launch import ClusterLauncher

BENCHMARK_NOTEBOOK = NOTEBOOKS_DIR / "03_benchmark.ipynb"


# -- planning -------------------------------------------------------------------------------------

#: Notebook parameters the suite sets for each model itself, with what to use instead of --set.
SUITE_PARAMETERS = {
    "model": "the suite sets it per model: pass --models",
    "data_root": "the suite sets it: pass --data-root",
    "results_dir": "the suite sets it: pass --results-dir",
    "run_name": "the suite names each model's folder: to name one, run the notebook with -p run_name",
}


def check_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``overrides`` (``run-suite --set``) when every key is a notebook parameter (a field of
    :func:`~loveda_utils.benchmark.config.parameter_defaults`) that the suite does not set itself.

    Raises:
        ConfigError: naming the key, with the valid ones.
    """
    valid = [name for name in parameter_defaults() if name not in SUITE_PARAMETERS]
    for key in overrides or {}:
        if key in SUITE_PARAMETERS:
            raise ConfigError(f"--set {key}: {SUITE_PARAMETERS[key]}")
        if key not in valid:
            raise ConfigError(f"--set {key}: not a parameter of notebooks/03_benchmark.ipynb; use "
                              f"one of {', '.join(valid)}")
    return dict(overrides or {})


@dataclass
class Job:
    """One model's run: its parameters, its folder, and how it ended."""

    model: str
    params: dict[str, Any]
    run_group: str
    run_dir: Path | None = None
    status: str = "pending"  # pending | skipped | done | failed
    seconds: float | None = None
    message: str = ""
    variant: Mapping[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> BenchmarkConfig:
        """The notebook parameters resolved and checked (a bad value raises, naming it)."""
        return BenchmarkConfig.from_params(self.params)

    @property
    def notebook(self) -> Path | None:
        return self.run_dir / NOTEBOOK_FILE if self.run_dir else None

    @property
    def label(self) -> str:
        """The model, with its variant's parameters when it has one (``m (train_scenes=urban)``)."""
        settings = ", ".join(f"{k}={v}" for k, v in self.variant.items())
        return f"{self.model} ({settings})" if settings else self.model

    def release(self) -> None:
        """Give up the claim of the job's folder (its run is over)."""
        if self.run_dir is not None:
            release_run_dir(self.run_dir)


def runs_to_start(jobs: Iterable[Job]) -> list[Job]:
    """The jobs of :func:`plan` that will run (not skipped as already done)."""
    return [job for job in jobs if job.status == "pending"]


def evaluated_scenes(run_dir: Path) -> set[str]:
    """The scenes the record in ``run_dir`` was evaluated on (its ``dataset.scenes``)."""
    record = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
    return set(normalize_scenes(record["dataset"]["scenes"]))


def run_params(
    profile: Profile,
    model: str,
    root: Path,
    results_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    variant: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The notebook parameters of ``model`` (in ``variant``) as :func:`plan` resolves them,
    before any run folder is claimed: the profile's, ``overrides``, the paths, the recipe's
    numbers."""
    root = Path(os.path.abspath(root))
    params = profile.params_for(model, is_synthetic(root), variant) | dict(overrides or {})
    params.update(model=model, data_root=str(root), results_dir=str(os.path.abspath(results_dir)))
    params = absolute_paths(params)
    params.update(Recipe.from_params(params).to_params())
    return params


def plan(
    profile: str | Profile,
    models: Sequence[str] | None,
    root: Path,
    results_dir: Path,
    force: bool = False,
    overrides: Mapping[str, Any] | None = None,
    *,
    claim: bool = True,
) -> list[Job]:
    """Decide, per model and variant, its parameters and run folder, or that it is done: a
    finished run of the same group (model, data, train scenes, crop, schedule) that evaluated the
    scenes this one evaluates (``status="skipped"``, ``run_dir`` that run's folder).

    Every parameter is checked (``--set`` keys, then each run's values, as the notebook will)
    before any folder is claimed. The folders are claimed now and held until
    :meth:`Job.release` (or the end of the process): a run's newest unfinished folder that no
    live run holds is resumed (with ``force``: a fresh folder). Paths go to the notebook
    absolute, since it runs in ``notebooks/``. ``claim=False`` (the pre-flight) decides the same
    but claims and writes nothing: the jobs to run keep ``run_dir=None``.
    """
    prof = get_profile(profile)
    overrides = check_overrides(overrides)
    names = list(models) if models else list(prof.models)
    for name in names:
        get_spec(name)  # unknown names fail here, with the list of valid ones
    results_dir = (check_output_folder(results_dir, "results_dir") if claim
                   else Path(os.path.abspath(results_dir)))
    synthetic = is_synthetic(root)
    jobs = []
    for name, variant in ((n, v) for n in names for v in prof.variants):
        # The resolved numbers go to the notebook too, so that its parameters cell shows them.
        params = run_params(prof, name, root, results_dir, overrides, variant)
        config = BenchmarkConfig.from_params(params)  # a bad value fails now, not in the notebook
        recipe = config.training_recipe
        group = run_group_for(name, synthetic, recipe.crop_size, recipe.max_steps,
                              config.train_scenes, eval_split=config.eval_split)
        jobs.append(Job(name, params, group, variant=dict(variant)))
    try:
        for job in jobs:
            eval_scenes = set(normalize_scenes(job.config.eval_scenes))
            done = [d for d in completed_runs(results_dir, job.run_group)
                    if eval_scenes <= evaluated_scenes(d)] if results_dir.is_dir() else []
            if done and not force:
                job.status, job.run_dir = "skipped", done[-1]
                job.message = f"already done: {done[-1] / METRICS_FILE} (use --force to run again)"
            elif claim:
                # force: a fresh folder, never the unfinished one (its last.ckpt may be the problem).
                job.run_dir = claim_run_dir(results_dir, job.run_group, resume=not force)
            if job.run_dir is not None:
                job.params["run_name"] = job.run_dir.name
    except BaseException:
        for job in jobs:
            job.release()
        raise
    return jobs


# -- execution ------------------------------------------------------------------------------------


def child_env(gpu: str | None, parallel: int = 1) -> dict[str, str]:
    """The environment of a model's notebook process: this one's, shown only ``gpu`` (an entry
    of :func:`visible_gpus`, so a physical id or UUID as this process sees it) when given, and,
    with ``parallel`` models running side by side, its share of this process's cores
    (:data:`~loveda_utils.runtime.CORES_ENV`, which the loader's worker count follows)."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if parallel > 1:
        env[CORES_ENV] = str(max(1, available_cores() // parallel))
    return env


def execute_job(job: Job, gpu: str | None, parallel: int = 1) -> Job:
    """Run the job's notebook through papermill in its claimed folder; its status and message
    say how it ended."""
    run_dir = job.run_dir
    if run_dir is None:
        raise ValueError(f"{job.label}: no run folder; plan() claims one before it runs")
    notebook = run_dir / NOTEBOOK_FILE
    params_file = run_dir / "suite_params.yaml"
    params_file.write_text(yaml.safe_dump(job.params, sort_keys=False))
    cmd = [sys.executable, "-m", "papermill", str(BENCHMARK_NOTEBOOK), str(notebook),
           "-f", str(params_file), "-k", "python3", "--cwd", str(NOTEBOOKS_DIR), "--no-progress-bar",
           "--log-output"]
    env = child_env(gpu, parallel)
    # The notebook takes over this process's claim of the folder; papermill holds the lock too,
    # so the folder stays claimed while the notebook runs even if the suite is killed.
    claim = held_claim(run_dir)
    env.update(claim.child_env() if claim else {})
    start = time.perf_counter()
    with open(run_dir / "papermill.log", "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT,
                              pass_fds=claim.pass_fds() if claim else ())
    job.seconds = time.perf_counter() - start
    if done.returncode == 0 and (run_dir / METRICS_FILE).exists():
        record = json.loads((run_dir / METRICS_FILE).read_text())
        job.status = "done"
        job.message = _summary(record)
    else:
        job.status = "failed"
        job.message = f"{_last_error(notebook, run_dir / 'papermill.log')} -> see {notebook}"
    return job


def _summary(record: dict[str, Any]) -> str:
    """A finished run in a few words; a Test-split run has predictions but no scores."""
    scores = [f"mIoU {100 * record['miou']:.2f}"] if record.get("miou") is not None else [
        "no scores (predictions only)"]
    if record.get("fps") is not None:
        scores.append(f"{record['fps']:.1f} fps")
    return ", ".join(scores)


def _last_error(notebook: Path, log_file: Path) -> str:
    """The exception of a failed notebook, whole (papermill stores it in the failing cell): the
    reason is often in its last words (the file at fault, the fix)."""
    try:
        import nbformat

        nb = nbformat.read(notebook, as_version=4)
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    return f"{output.get('ename')}: {output.get('evalue')}"
    except Exception:  # an unreadable notebook: fall back to the log
        pass
    try:
        lines = [line for line in log_file.read_text().splitlines() if line.strip()]
        return lines[-1] if lines else "failed"
    except OSError:
        return "failed"


def visible_gpus(ids: Sequence[str] | None = None) -> list[str]:
    """The GPUs to spread models over (one model per device), as ``CUDA_VISIBLE_DEVICES`` entries
    for the children: all this process sees, or those of ``ids`` (``--gpus``: this process's
    CUDA device indices, as the pre-flight reads them); empty on CPU.

    Under a ``CUDA_VISIBLE_DEVICES`` of its own (a scheduler's ``2,3``) this process's device 0
    is physical GPU 2: the children get the parent's entries (``2``, ``3``), never ``0`` and ``1``.
    """
    import torch

    if not torch.cuda.is_available():
        return list(ids or [])
    count = torch.cuda.device_count()
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent is None:
        entries = [str(i) for i in range(count)]
    else:
        # CUDA stops at the first invalid entry: the count is of the entries before it.
        entries = [entry.strip() for entry in parent.split(",") if entry.strip()][:count]
    if ids is None:
        return entries
    chosen = []
    for value in ids:
        if not str(value).isdigit() or int(value) >= len(entries):
            raise ConfigError(f"--gpus {value!r}: this process has CUDA devices 0..{len(entries) - 1}")
        chosen.append(entries[int(value)])
    return chosen


@dataclass
class SuiteResult:
    jobs: list[Job]
    report: dict[str, Path] = field(default_factory=dict)
    rendered: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def run_suite(
    profile: str | Profile = "quick",
    models: Sequence[str] | None = None,
    data_root: str | Path | None = None,
    results_dir: str | Path | None = None,
    force: bool = False,
    overrides: Mapping[str, Any] | None = None,
    gpus: Sequence[str] | None = None,
    render: bool = True,
    readme: bool | None = True,
    readme_path: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = print,
    *,
    check: bool = True,
    allow_cpu: bool = False,
    allow_memory: bool = False,
    launcher: ClusterLauncher | None = None,
) -> SuiteResult:
    """Run the suite and rebuild the table, README section and comparison notebook.

    ``readme``: False (or None) leaves every README alone (``run-suite --no-readme``);
    ``readme_path``: another README to rewrite (see :func:`~loveda_utils.results.report.write_report`).
    ``check``: run the pre-flight first (``loveda_utils/benchmark/preflight.py``) and raise
    :class:`~loveda_utils.errors.PreflightError` when it refuses; ``allow_cpu`` and
    ``allow_memory`` accept a missing GPU and an over-budget memory estimate. ``launcher``: run
    the models as cluster jobs (``loveda_utils/benchmark/launch.py``) instead of here.
    """
    from .devices import cuda_devices
    from .preflight import preflight

    check_overrides(overrides)  # before anything runs (the mini-LoveDA may be generated below)
    prof = get_profile(profile)
    if results_dir is not None:
        check_output_folder(results_dir, "results_dir")
    root = resolve_data_root(data_root)
    results = check_output_folder(results_dir_for(prof, results_dir, root), "results_dir")
    executor = launcher.executor(results) if launcher is not None else None  # fails fast
    if check:
        report = preflight(prof, models, root, results, force=force, overrides=overrides,
                           devices=None if launcher else cuda_devices(gpus),
                           devices_on_nodes=launcher is not None, allow_cpu=allow_cpu,
                           allow_memory=allow_memory)
        log(report.format())
        if not report.ok:
            raise PreflightError(f"pre-flight refused to start the suite: {len(report.refused)} "
                                 "problem(s), their fixes listed above (or pass --skip-check)",
                                 report)
    jobs = plan(prof, models, root, results, force, overrides)
    todo = runs_to_start(jobs)
    kind = "synthetic mini-LoveDA" if is_synthetic(root) else "LoveDA"
    log(f"suite '{prof.name}': {len(jobs)} run(s) on {kind} at {root}; {len(todo)} to run; "
        f"results in {results}")
    for job in jobs:
        if job.status == "skipped":
            log(f"  - {job.label}: {job.message}")
    gpus = visible_gpus(gpus)
    slots: list[str | None] = list(gpus) if gpus else [None]
    free = list(slots)
    lock = threading.Lock()
    counter = iter(range(1, len(todo) + 1))

    def worker(job: Job) -> Job:
        with lock:
            slot = free.pop(0)
            index = next(counter)
        where = f" on GPU {slot}" if slot is not None else ""
        log(f"[{index}/{len(todo)}] {job.label}{where}: running -> {job.run_dir}")
        try:
            execute_job(job, slot, parallel=min(len(slots), len(todo)))
        finally:
            job.release()
            with lock:
                free.append(slot)
        took = f"{job.seconds:.0f}s" if job.seconds is not None else "?"
        log(f"[{index}/{len(todo)}] {job.label}: {job.status.upper()} in {took}: {job.message}")
        return job

    try:
        if launcher is not None and executor is not None:
            launcher.run(executor, todo, results, allow_cpu=allow_cpu, allow_memory=allow_memory,
                         log=log)
        else:
            with ThreadPoolExecutor(max_workers=len(slots)) as pool:
                list(pool.map(worker, todo))
    finally:
        for job in jobs:
            job.release()

    result = SuiteResult(jobs)
    if render:
        # The repository's README only ever shows the project's own results/ (write_report).
        result.report = write_report(results, readme=bool(readme), readme_path=readme_path)
        log(f"table: {result.report.get('markdown')}")
        try:
            result.rendered = render_comparison(results, data_root=root)
            log(f"comparison (open in a browser): {result.rendered.get('html')}")
        except Exception as exc:  # the table stands even when the rendering fails
            log(f"comparison notebook failed to render: {exc}")
            result.rendered = {}
    ok = sum(j.status == "done" for j in jobs)
    skipped = sum(j.status == "skipped" for j in jobs)
    log(f"suite finished: {ok} done, {skipped} skipped, {len(result.failed)} failed")
    for job in result.failed:
        log(f"  FAILED {job.label}: {job.message}")
    return result
