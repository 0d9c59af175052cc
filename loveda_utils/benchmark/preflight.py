"""The pre-flight: what would stop a long suite run, found in seconds before it starts.

``python -m loveda_utils run-suite ... --check`` runs it alone; ``run-suite`` runs it before the
first model starts and refuses to start while anything is refused (``--skip-check`` does not
look). It checks, for the models the suite would run (those without a record, or all with
``force``):

* ``data``: the splits and scenes they train and evaluate on, with ``check-data``'s quick check
  (:func:`loveda_utils.data.validation.check_tree`: pairing, PNG headers, mask values) and, for
  real data, every release tile present (``--complete``). The synthetic mini-LoveDA counts as
  complete for recipes meant for it, not for the GPU recipes of :data:`GPU_RECIPES`.
* ``weights``: every pretrained file in its cache (:func:`loveda_utils.models.fetch.check`, no
  network).
* ``gpu``: a CUDA device for :data:`GPU_RECIPES` (no silent CPU fallback; ``allow_cpu``).
* ``gpu memory``: each model's estimated peak training memory against the smallest device it
  may get (:mod:`loveda_utils.benchmark.footprint`; ``allow_memory`` when the estimate errs).
* ``disk``: room for the checkpoints, predictions and run files it will write.
* ``results``: the results folder can be written.

No model is built except on the meta device (shapes only), nothing is downloaded. Each check
gives :class:`Finding` rows; :meth:`PreflightReport.format` prints them as one table with every
fix below it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.classes import SPLITS, normalize_scenes, normalize_split
from ..data.synthetic import is_synthetic
from ..data.validation import check_tree
from ..errors import ConfigError
from ..models import fetch
from ..models.caches import FETCH_COMMAND
from ..results.store import check_output_folder
from ..runtime import GB, precision_dtype, training_precision
from ..training.recipe import MMSEG
from .devices import Device, cuda_devices
from .footprint import Footprint, footprint, training_memory_bytes
from .profiles import Profile, get_profile
from .suite import Job, plan, runs_to_start

#: Recipes that are the GPU protocol on the LoveDA release: they need a CUDA device and the
#: release's tiles (the synthetic mini-LoveDA is the CPU demo's data).
GPU_RECIPES = frozenset({MMSEG.name})
#: Bytes budgeted per prediction PNG per megapixel. LoveDA's released masks (8-bit, 7 classes,
#: 1024 px) take about 12 kB; predictions are noisier at class borders, so several times that.
PREDICTION_BYTES_PER_MPIX = 64_000
#: Bytes budgeted for a run folder's other files: the executed notebook with its figures,
#: logs, TensorBoard events, per-tile confusion matrices, the record.
RUN_FILES_BYTES = 20_000_000

#: Finding statuses: passed, refused (stops the run), refused but overridden, not checked here.
OK, REFUSED, ALLOWED, SKIPPED = "ok", "REFUSED", "allowed", "skipped"


@dataclass(frozen=True)
class Finding:
    """One row of the pre-flight table: a check, what it looked at, what it found, the fix."""

    check: str
    subject: str
    status: str
    detail: str
    fix: str = ""

    @property
    def refused(self) -> bool:
        return self.status == REFUSED


@dataclass
class PreflightReport:
    """Every finding of one pre-flight, and how long it took."""

    title: str
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def refused(self) -> list[Finding]:
        return [f for f in self.findings if f.refused]

    @property
    def ok(self) -> bool:
        return not self.refused

    def format(self) -> str:
        """The table, then a verdict and each fix once."""
        header = ("check", "subject", "status", "detail")
        rows = [(f.check, f.subject, f.status, f.detail) for f in self.findings]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(3)]
        lines = [f"{self.title} ({self.seconds:.1f} s)"]
        for i, row in enumerate((header, *rows)):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
            if i == 0:
                lines.append("  ".join("-" * w for w in (*widths, len(header[3]))))
        if self.ok:
            lines.append("pre-flight passed.")
            return "\n".join(lines)
        lines.append(f"refused to start: {len(self.refused)} problem(s). Fix them (or pass "
                     "--skip-check to start anyway):")
        lines += [f"  - {fix}" for fix in dict.fromkeys(f.fix for f in self.refused if f.fix)]
        return "\n".join(lines)


# -- what would run --------------------------------------------------------------------------


def needs_gpu(run: Job) -> bool:
    """The run's recipe is meant for a GPU (:data:`GPU_RECIPES`)."""
    return run.config.training_recipe.name in GPU_RECIPES


def _gpu_recipes(runs: Iterable[Job]) -> list[str]:
    """The GPU recipes the runs train with, sorted (for the findings' text)."""
    return sorted({r.config.training_recipe.name for r in runs if needs_gpu(r)})


def _one_per_model(runs: Iterable[Job]) -> list[Job]:
    """The first run of each model: a profile's variants (its train scenes) share the model's
    weights and training memory."""
    first: dict[str, Job] = {}
    for run in runs:
        first.setdefault(run.model, run)
    return list(first.values())


# -- data ------------------------------------------------------------------------------------


def _data_needs(runs: Iterable[Job]) -> dict[str, set[str]]:
    """Split -> scenes the runs read: Train (unless a checkpoint is evaluated) and the eval split."""
    needs: dict[str, set[str]] = {}
    for run in runs:
        c = run.config
        if not c.checkpoint:  # training reads the first split, Train
            needs.setdefault(SPLITS[0], set()).update(normalize_scenes(c.train_scenes))
        needs.setdefault(normalize_split(c.eval_split), set()).update(normalize_scenes(c.eval_scenes))
    return needs


@dataclass
class _EvalTiles:
    """Per split: tiles found and the largest tile's pixels (for the predictions' budget)."""

    count: dict[str, int] = field(default_factory=dict)
    pixels: dict[str, int] = field(default_factory=dict)


def check_data(runs: Sequence[Job], root: Path) -> tuple[list[Finding], _EvalTiles]:
    """One row per split the runs read; every release tile of its scenes must be there."""
    synthetic = is_synthetic(root)
    gpu_recipes = _gpu_recipes(runs)
    findings, tiles = [], _EvalTiles()
    invalid: dict[str, list[str]] = {}  # split -> scenes, where check_tree found problems
    for split, needed in sorted(_data_needs(runs).items(), key=lambda kv: SPLITS.index(kv[0])):
        scene_list = sorted(needed, key=lambda name: name != "Urban")
        subject = f"{split}/{','.join(scene_list)}"
        report = check_tree(root, [split], scene_list, level="quick", release=not synthetic,
                            complete=not synthetic)
        found = [s for s in report.summaries if s.split == split]
        tiles.count[split] = sum(s.n_images for s in found)
        tiles.pixels[split] = max((w * h for s in found for w, h in s.sizes), default=0)
        if not report.ok:
            first = report.problems[0]
            more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
            findings.append(Finding("data", subject, REFUSED, f"{first}{more}"))
            invalid[split] = scene_list
        elif synthetic and gpu_recipes:
            findings.append(Finding(
                "data", subject, REFUSED,
                f"the synthetic mini-LoveDA ({tiles.count[split]} tiles), not the LoveDA release "
                f"that recipe {', '.join(gpu_recipes)} measures",
                "data: pass --data-root (or set $LOVEDA_ROOT) to the LoveDA release "
                "(`python -m loveda_utils download-data ROOT`), or run --profile quick on the "
                "mini-LoveDA"))
        else:
            kind = "mini-LoveDA (synthetic), complete" if synthetic else "every release tile"
            findings.append(Finding("data", subject, OK, f"{tiles.count[split]:,} tiles: {kind} "
                                                         "(quick check)"))
    if invalid:  # one command shows every problem of every refused split
        scenes = sorted({s for names in invalid.values() for s in names}, key=lambda s: s != "Urban")
        fix = (f"data: see every problem with `python -m loveda_utils check-data {root} --splits "
               f"{','.join(invalid)} --scenes {','.join(s.lower() for s in scenes)} --quick"
               + ("`" if synthetic else " --complete`; get the release with `python -m "
                  f"loveda_utils download-data {root}`"))
        findings = [Finding(f.check, f.subject, f.status, f.detail, fix)
                    if f.refused and not f.fix else f for f in findings]
    return findings, tiles


# -- weights ---------------------------------------------------------------------------------


def check_weights(runs: Sequence[Job], profile: Profile | None = None) -> list[Finding]:
    """One row per model: its pretrained files in their caches (or the checkpoint it evaluates);
    the models missing files share one ``fetch-weights`` command per ``--pretrained`` choice
    (``--profile NAME`` when that is every model of ``profile``)."""
    rows: list[tuple[Job, str, str]] = []  # run, status, detail
    missing: dict[str | None, list[str]] = {}  # --pretrained value (None: the default) -> models
    for run in _one_per_model(runs):
        c = run.config
        if c.checkpoint:
            present = Path(c.checkpoint).is_file()
            rows.append((run, OK if present else REFUSED,
                         f"checkpoint {c.checkpoint}" + ("" if present else " does not exist")))
            continue
        pretrained = c.training_recipe.pretrained
        files = fetch.needed_files([run.model], pretrained or "none")
        reports = fetch.check(files)
        bad = [r for r in reports if not r.ok]
        if not files:
            rows.append((run, OK, f"pretrained={pretrained!r}: no file needed"))
        elif not bad:
            labels = ", ".join(fetch.file_label(r.file) for r in reports)
            rows.append((run, OK, f"{pretrained}: {labels} present"))
        else:
            missing.setdefault(None if pretrained == "default" else pretrained, []).append(run.model)
            rows.append((run, REFUSED, f"{pretrained}: " + "; ".join(
                f"{fetch.file_label(r.file)} {r.status}" for r in bad)))
    findings = []
    for run, status, detail in rows:
        fix = ""
        if status == REFUSED and run.config.checkpoint:
            fix = f"weights: checkpoint={run.config.checkpoint!r} of {run.model}: pass an existing .ckpt"
        elif status == REFUSED:
            choice = next(ch for ch, names in missing.items() if run.model in names)
            names = missing[choice]
            every = profile is not None and set(names) == set(profile.models)
            command = f"{FETCH_COMMAND} " + (f"--profile {profile.name}" if every and profile
                                             else f"--models {','.join(names)}")
            command += "" if choice is None else f" --pretrained {choice}"
            fix = (f"weights: fetch them with `{command}` (add --mirror URL or --from DIR where "
                   "there is no internet)")
        findings.append(Finding("weights", run.model, status, detail, fix))
    return findings


# -- devices ---------------------------------------------------------------------------------


def trains_on_gpu(run: Job) -> bool:
    """Whether ``run`` trains on a CUDA device when one is there (not a checkpoint's evaluation,
    not ``accelerator="cpu"``)."""
    return not run.config.checkpoint and str(run.config.accelerator).lower() != "cpu"


def check_devices(
    runs: Sequence[Job],
    devices: Sequence[Device],
    *,
    allow_cpu: bool = False,
    allow_memory: bool = False,
    footprints: Mapping[str, Footprint] | None = None,
) -> list[Finding]:
    """A GPU for the runs that need one; each model's estimated training memory on the
    smallest of ``devices`` (the models share them, one per device). ``footprints``: the
    models' footprints with activations (a model missing from them is left out), computed
    here when not given."""
    needing = _gpu_recipes(runs)
    if not devices:
        if not needing:
            return [Finding("gpu", "cuda", OK, "none visible: these recipes run on the CPU")]
        detail = f"no CUDA device visible; recipe {', '.join(needing)} is meant for a GPU"
        if allow_cpu:
            return [Finding("gpu", "cuda", ALLOWED, detail + ": running on the CPU (--allow-cpu)")]
        import torch

        built = f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none (a CPU build)'}"
        return [Finding("gpu", "cuda", REFUSED, detail,
                        f"gpu: run where `nvidia-smi` lists a GPU and torch sees it ({built}; "
                        "check CUDA_VISIBLE_DEVICES), or pass --allow-cpu to train on the CPU "
                        "anyway (many times slower)")]
    findings = [Finding("gpu", "cuda", OK, "; ".join(str(d) for d in devices))]
    smallest = min(devices, key=lambda d: d.total_bytes)
    policy: list[str] = []  # the runtime's AMP choice, asked once (it may start an interpreter)
    for run in filter(trains_on_gpu, _one_per_model(runs)):
        recipe = run.config.training_recipe
        given = None if footprints is None else footprints.get(run.model)
        if footprints is not None and given is None:
            continue  # no footprint: the caller has its finding already
        fp = given if given is not None and given.saved_bytes is not None else _try_footprint(
            run, with_activations=True)
        if isinstance(fp, Finding):
            findings.append(fp)
            continue
        if recipe.precision is None and not policy:
            policy.append(training_precision("cuda"))
        precision = recipe.precision or policy[0]
        need = training_memory_bytes(fp, recipe.optimizer, precision_dtype(precision) is not None)
        detail = (f"~{need / GB:.1f} GB to train (batch {recipe.batch_size}, {recipe.crop_size} "
                  f"px, {precision}) on {smallest}")
        if need <= smallest.total_bytes:
            findings.append(Finding("gpu memory", run.model, OK, detail))
        elif allow_memory:
            findings.append(Finding("gpu memory", run.model, ALLOWED, detail + " (--allow-memory)"))
        else:
            findings.append(Finding(
                "gpu memory", run.model, REFUSED, detail,
                f"gpu memory: {run.model}: a GPU with more memory, or a smaller batch (--set "
                f"batch_size=..., recorded in the table's Batch column), or --allow-memory if "
                "the estimate (loveda_utils/benchmark/footprint.py) is wrong for this model"))
    return findings


def _try_footprint(run: Job, with_activations: bool) -> Footprint | Finding:
    """``run``'s model's footprint, or a skipped finding saying why it has none."""
    recipe = run.config.training_recipe
    try:
        if with_activations:
            return footprint(run.model, recipe.batch_size, recipe.crop_size)
        return footprint(run.model)
    except Exception as exc:  # a model the meta device cannot build or run: nothing to refuse
        return Finding("footprint", run.model, SKIPPED, "not estimated on the meta device "
                                                        f"({type(exc).__name__}: {exc})"[:300])


# -- disk and results folder -----------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def run_bytes(run: Job, fp: Footprint, tiles: _EvalTiles) -> dict[str, int]:
    """What one run writes: its checkpoint, its prediction PNGs, its other files."""
    c = run.config
    split = normalize_split(c.eval_split)
    count = tiles.count.get(split, 0)
    if c.limit_eval_images is not None:
        count = min(count, c.limit_eval_images)
    per_png = PREDICTION_BYTES_PER_MPIX * tiles.pixels.get(split, 0) / 1e6
    pngs = (count if c.save_predictions else 0) + min(count, c.visual_tiles)
    return {"checkpoints": 0 if c.checkpoint else fp.checkpoint_bytes,
            "predictions": int(pngs * per_png), "run files": RUN_FILES_BYTES}


def check_disk(runs: Sequence[Job], results_dir: Path, tiles: _EvalTiles,
               footprints: Mapping[str, Footprint]) -> list[Finding]:
    """The runs' files (:func:`run_bytes`) against the free space where they go."""
    totals: dict[str, int] = {}
    unknown = sorted({run.model for run in runs if run.model not in footprints})
    for run in runs:
        if run.model in footprints:
            for kind, size in run_bytes(run, footprints[run.model], tiles).items():
                totals[kind] = totals.get(kind, 0) + size
    need = sum(totals.values())
    where = _existing_ancestor(results_dir)
    free = shutil.disk_usage(where).free
    parts = ", ".join(f"{kind} {size / GB:.2f}" for kind, size in totals.items())
    detail = f"needs ~{need / GB:.2f} GB ({parts}) of {free / GB:.1f} GB free on {where}"
    if unknown:
        detail += f"; {', '.join(unknown)} not counted (no footprint)"
    if need <= free:
        return [Finding("disk", str(results_dir), OK, detail)]
    return [Finding("disk", str(results_dir), REFUSED, detail,
                    f"disk: free {(need - free) / GB:.1f} GB on {where}, or pass --results-dir on "
                    "a disk with room")]


def check_results_dir(results_dir: Path) -> list[Finding]:
    """The folder (or the nearest existing parent it will be created in) takes a file:
    :func:`~loveda_utils.results.store.check_output_folder`, then a file really written."""
    fix = f"results: pass --results-dir to a folder you can write (not {results_dir})"
    try:
        check_output_folder(results_dir, "--results-dir")
    except ConfigError as exc:
        return [Finding("results", str(results_dir), REFUSED, str(exc), fix)]
    where = _existing_ancestor(results_dir)
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".preflight-"):
            pass
    except OSError as exc:  # a read-only mount, a quota, root squashed on NFS
        return [Finding("results", str(results_dir), REFUSED,
                        f"cannot write in {where} ({exc.strerror or exc})", fix)]
    state = "writable" if where == results_dir.absolute() else f"will be created in {where}"
    return [Finding("results", str(results_dir), OK, state)]


# -- the whole pre-flight --------------------------------------------------------------------


def preflight(
    profile: str | Profile,
    models: Sequence[str] | None,
    root: Path,
    results_dir: Path,
    *,
    devices: Sequence[Device] | None = None,
    devices_on_nodes: bool = False,
    allow_cpu: bool = False,
    allow_memory: bool = False,
    **plan_options: Any,
) -> PreflightReport:
    """Every check for the runs the suite would start (see the module docstring).

    ``plan_options``: :func:`~loveda_utils.benchmark.suite.plan`'s (``force``, ``overrides``):
    the runs checked are those it would start.
    ``devices``: where the models will run (default: every visible CUDA device).
    ``devices_on_nodes``: the models run elsewhere (cluster jobs), which check their own device
    when they start (:func:`check_devices` in :mod:`loveda_utils.benchmark.launch`).
    """
    start = time.perf_counter()
    prof = get_profile(profile)
    runs = runs_to_start(plan(prof, models, root, results_dir, claim=False, **plan_options))
    kind = "mini-LoveDA (synthetic)" if is_synthetic(root) else "LoveDA"
    report = PreflightReport(f"pre-flight of suite '{prof.name}': {len(runs)} model(s) to run on "
                             f"{kind} at {root}, results in {results_dir}")
    if runs:
        data, tiles = check_data(runs, root)
        report.findings += data
        report.findings += check_weights(runs, prof)
        found = [] if devices_on_nodes else cuda_devices() if devices is None else list(devices)
        # One meta build per model: with its training forward when its memory is checked.
        footprints: dict[str, Footprint] = {}
        for run in _one_per_model(runs):
            fp = _try_footprint(run, with_activations=bool(found) and trains_on_gpu(run))
            if isinstance(fp, Finding):
                report.findings.append(fp)
            else:
                footprints[run.model] = fp
        if devices_on_nodes:
            report.findings.append(Finding("gpu", "cuda", SKIPPED, "checked by each job on its node"))
        else:
            report.findings += check_devices(runs, found, allow_cpu=allow_cpu,
                                             allow_memory=allow_memory, footprints=footprints)
        report.findings += check_disk(runs, results_dir, tiles, footprints)
    report.findings += check_results_dir(results_dir)
    report.seconds = time.perf_counter() - start
    return report
