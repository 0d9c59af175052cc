"""The benchmark suite: ``03_benchmark.ipynb`` through papermill once per model, then the report.

A profile is a training recipe (``loveda_utils/training/recipe.py``), the notebook parameters
its models share, and the models with their own overrides:

* ``quick``: the CPU demo on the embedded mini-LoveDA: the ``quick`` recipe (small crops, a short
  schedule, random initialisation since nothing may download) over small models. Meant to finish
  within 15 minutes on 2 cores and still give a readable table. With real LoveDA
  (``$LOVEDA_ROOT`` or ``--data-root``) it evaluates a fixed subset of Val so that it stays a demo.
* ``mmseg``: MMSeg's LoveDA protocol for a GPU: the ``mmseg`` recipe, ms+flip, fps over 200
  images at 1024 px, over the torchvision, smp and EO-pretrained models.

A failing model does not stop the suite; finished ones are skipped on a re-run unless
``force``; an unfinished run folder (no record) is resumed (with ``force``: a fresh folder is
claimed instead); records never overwrite each other.
With several GPUs, models run in parallel, one per device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.root import resolve_data_root
from ..data.synthetic import is_synthetic
from ..errors import ConfigError
from ..models.registry import get_spec, models_tagged
from ..paths import NOTEBOOKS_DIR, PROJECT_ROOT, RESULTS_DIR
from ..results.report import render_comparison, write_report
from ..results.store import (
    METRICS_FILE,
    NOTEBOOK_FILE,
    claim_run_dir,
    completed_runs,
    run_group_for,
    unfinished_group_run,
)
from ..training.recipe import DEFAULT_RECIPE, RECIPE_PARAMETER, Recipe, get_recipe

BENCHMARK_NOTEBOOK = NOTEBOOKS_DIR / "03_benchmark.ipynb"


@dataclass(frozen=True)
class Profile:
    """A named set of models, the recipe they train with and the notebook parameters they share.

    ``models`` maps each model to its own parameter overrides (usually none).
    ``real_data_params`` are applied on top of ``params`` when the data is real LoveDA.
    """

    name: str
    description: str
    models: Mapping[str, Mapping[str, Any]]
    params: Mapping[str, Any]
    real_data_params: Mapping[str, Any] = field(default_factory=dict)
    recipe: str = DEFAULT_RECIPE

    def __post_init__(self) -> None:
        get_recipe(self.recipe)  # an unknown recipe fails when the profile is made

    def params_for(self, model: str, synthetic: bool) -> dict[str, Any]:
        """The notebook parameters of ``model``: the recipe's name, then the shared parameters,
        the real-data ones and the model's own overrides (recipe fields among them override
        the recipe's numbers)."""
        out = {RECIPE_PARAMETER: self.recipe, **self.params}
        if not synthetic:
            out.update(self.real_data_params)
        out.update(self.models.get(model, {}))
        return out


def _tagged(tag: str, **overrides: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The registry models tagged ``tag`` (its members), each with its parameter overrides."""
    members = models_tagged(tag)
    if stray := sorted(set(overrides) - set(members)):
        raise ValueError(f"overrides for {stray}, which do not carry the registry tag {tag!r}")
    return {name: overrides.get(name, {}) for name in members}


#: A profile's models are the registry models carrying the tag of the profile's name.
PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        description="CPU demo on the embedded mini-LoveDA: small models, short schedule",
        models=_tagged(
            "quick",
            # torchvision's MobileNetV3 uses BatchNorm momentum 0.01, so its running statistics
            # lag on short schedules (after 150 steps: 5.6% mIoU in eval mode against 34% with
            # batch statistics). It is also the fastest model here, so it gets a longer schedule;
            # it still trails at 400 steps (see the README's notes).
            lraspp_mobilenet_v3_large={"max_steps": 400},
        ),
        recipe="quick",
        params={
            "ms_flip": True,
            "fps_images": 20,
            "fps_size": None,  # the eval tiles' size
            "flops_size": 1024,
            "visual_tiles": 4,
            "save_predictions": False,
            "progress": False,
        },
        real_data_params={"limit_eval_images": 16, "crop_size": 256},
    ),
    "mmseg": Profile(
        name="mmseg",
        description="MMSeg's LoveDA protocol on real LoveDA, for a GPU",
        models=_tagged("mmseg"),
        recipe="mmseg",
        params={
            "ms_flip": True,
            "fps_images": 200,
            "fps_size": 1024,
            "flops_size": 1024,
            "save_predictions": True,
            "progress": True,
        },
    ),
}


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ConfigError(f"profile={profile!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[profile]


# -- planning -------------------------------------------------------------------------------------


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

    @property
    def notebook(self) -> Path | None:
        return self.run_dir / NOTEBOOK_FILE if self.run_dir else None


def plan(
    profile: str | Profile,
    models: Sequence[str] | None,
    root: Path,
    results_dir: Path,
    force: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> list[Job]:
    """Decide, per model, its parameters and run folder (claimed now), or that it is done."""
    prof = get_profile(profile)
    names = list(models) if models else list(prof.models)
    for name in names:
        get_spec(name)  # unknown names fail here, with the list of valid ones
    synthetic = is_synthetic(root)
    jobs = []
    for name in names:
        params = prof.params_for(name, synthetic) | dict(overrides or {})
        params.update(model=name, data_root=str(root), results_dir=str(results_dir))
        # The resolved numbers go to the notebook too, so that its parameters cell shows them.
        recipe = Recipe.from_params(params)
        params.update(recipe.to_params())
        group = run_group_for(name, synthetic, recipe.crop_size, recipe.max_steps)
        job = Job(name, params, group)
        done = completed_runs(results_dir, group)
        if done and not force:
            job.status, job.run_dir = "skipped", done[-1]
            job.message = f"already done: {done[-1] / METRICS_FILE} (use --force to run again)"
        else:
            # force: a fresh folder, never the unfinished one (its last.ckpt may be the problem).
            unfinished = None if force else unfinished_group_run(results_dir, group)
            job.run_dir = unfinished or claim_run_dir(results_dir, group)
        params["run_name"] = job.run_dir.name
        jobs.append(job)
    return jobs


# -- execution ------------------------------------------------------------------------------------


def _execute(job: Job, gpu: str | None) -> Job:
    params_file = job.run_dir / "suite_params.yaml"
    params_file.write_text(yaml.safe_dump(job.params, sort_keys=False))
    cmd = [sys.executable, "-m", "papermill", str(BENCHMARK_NOTEBOOK), str(job.notebook),
           "-f", str(params_file), "-k", "python3", "--cwd", str(NOTEBOOKS_DIR), "--no-progress-bar",
           "--log-output"]
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    start = time.perf_counter()
    with open(job.run_dir / "papermill.log", "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
    job.seconds = time.perf_counter() - start
    if done.returncode == 0 and (job.run_dir / METRICS_FILE).exists():
        record = json.loads((job.run_dir / METRICS_FILE).read_text())
        job.status = "done"
        job.message = f"mIoU {100 * record['miou']:.2f}, {record['fps']:.1f} fps"
    else:
        job.status = "failed"
        job.message = f"{_last_error(job.notebook, job.run_dir / 'papermill.log')} -> see {job.notebook}"
    return job


def _last_error(notebook: Path, log_file: Path) -> str:
    """The exception line of a failed notebook (papermill stores it in the failing cell)."""
    try:
        import nbformat

        nb = nbformat.read(notebook, as_version=4)
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    return f"{output.get('ename')}: {output.get('evalue')}"[:300]
    except Exception:  # an unreadable notebook: fall back to the log
        pass
    try:
        lines = [line for line in log_file.read_text().splitlines() if line.strip()]
        return lines[-1][:300] if lines else "failed"
    except OSError:
        return "failed"


def visible_gpus() -> list[str]:
    """CUDA device ids to spread models over (one model per device); empty on CPU."""
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


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
    readme: Path | None = PROJECT_ROOT / "README.md",
    log: Callable[[str], None] = print,
) -> SuiteResult:
    """Run the suite and rebuild the table, README section and comparison notebook."""
    root = resolve_data_root(data_root)
    results = Path(results_dir) if results_dir else RESULTS_DIR
    prof = get_profile(profile)
    jobs = plan(prof, models, root, results, force, overrides)
    todo = [j for j in jobs if j.status == "pending"]
    kind = "synthetic mini-LoveDA" if is_synthetic(root) else "LoveDA"
    log(f"suite '{prof.name}': {len(jobs)} model(s) on {kind} at {root}; {len(todo)} to run")
    for job in jobs:
        if job.status == "skipped":
            log(f"  - {job.model}: {job.message}")
    gpus = list(gpus) if gpus is not None else visible_gpus()
    slots = gpus or [None]
    free = list(slots)
    lock = threading.Lock()
    counter = iter(range(1, len(todo) + 1))

    def worker(job: Job) -> Job:
        with lock:
            slot = free.pop(0)
            index = next(counter)
        where = f" on cuda:{slot}" if slot is not None else ""
        log(f"[{index}/{len(todo)}] {job.model}{where}: running -> {job.run_dir}")
        try:
            _execute(job, slot)
        finally:
            with lock:
                free.append(slot)
        took = f"{job.seconds:.0f}s" if job.seconds is not None else "?"
        log(f"[{index}/{len(todo)}] {job.model}: {job.status.upper()} in {took}: {job.message}")
        return job

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        list(pool.map(worker, todo))

    result = SuiteResult(jobs)
    if render:
        # The repository's README only ever shows the project's own results/ (write_report).
        result.report = write_report(results, readme=readme is not None, readme_path=readme)
        log(f"table: {result.report.get('markdown')}")
        try:
            result.rendered = render_comparison(results, data_root=root)
            log(f"comparison: {result.rendered.get('html')}")
        except Exception as exc:  # the table stands even when the rendering fails
            log(f"comparison notebook failed to render: {exc}")
            result.rendered = {}
    ok = sum(j.status == "done" for j in jobs)
    skipped = sum(j.status == "skipped" for j in jobs)
    log(f"suite finished: {ok} done, {skipped} skipped, {len(result.failed)} failed")
    for job in result.failed:
        log(f"  FAILED {job.model}: {job.message}")
    return result
