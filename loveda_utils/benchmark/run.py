"""One benchmark run: train (or load) a model, evaluate it under the MMSeg protocol, measure it,
and write its results record. ``notebooks/03_benchmark.ipynb`` is a thin shell over this module.

The steps are separate methods so that the notebook shows each one (and a failure points at
it): :meth:`BenchmarkRun.prepare`, :meth:`~BenchmarkRun.train`, :meth:`~BenchmarkRun.evaluate`,
:meth:`~BenchmarkRun.measure`, :meth:`~BenchmarkRun.save_visuals`, :meth:`~BenchmarkRun.write_record`.
Each step returns a typed outcome (:class:`~loveda_utils.training.trainer.TrainOutcome`,
:class:`Evaluation`, :class:`Measurement`) and keeps it on the run; the record is built from them.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from ..data.classes import CLASS_NAMES
from ..data.datamodule import LoveDADataModule
from ..data.root import resolve_data_root
from ..errors import CheckpointError
from ..evaluation.loop import EvaluationResult, evaluate
from ..files import write_json_atomic
from ..models.registry import get_spec
from ..paths import DEMO_RESULTS_DIR, PROJECT_ROOT, RESULTS_DIR
from ..results.schema import RECORD_SCHEMA, check_record_keys, validate_record
from ..results.store import (
    METRICS_FILE,
    PARAMS_FILE,
    check_output_folder,
    claim_run_dir,
    release_run_dir,
    run_group_for,
)
from ..results.uncertainty import save_run_tiles, uncertainty_fields
from ..runtime import resolve_device
from ..training.checkpoint import LoadedCheckpoint, load_checkpoint
from ..training.task import SegmentationTask
from ..training.trainer import TrainOutcome, build_datamodule, fit
from .config import BenchmarkConfig
from .measure import (
    Complexity,
    SpeedResult,
    count_complexity,
    count_params,
    measure_fps,
    measure_fps_fast,
)
from .memory import TrainingMemory, measure_training_memory

#: Packages whose versions go into every record.
VERSIONED = ("torch", "torchvision", "torchgeo", "segmentation-models-pytorch", "timm", "lightning",
             "torchmetrics", "numpy", "pillow")


@dataclass(frozen=True)
class TrainedAs:
    """The table's training columns: what the evaluated weights were trained with (the
    config's recipe, or what the evaluated checkpoint says)."""

    crop_size: int
    lr_schd: int
    batch_size: int


@dataclass(frozen=True)
class Evaluation:
    """Scores on the eval split: plain (whole tiles or sliding window), and ms+flip if it ran."""

    single: EvaluationResult
    ms_flip: EvaluationResult | None


@dataclass(frozen=True)
class Measurement:
    """Speed, training memory, size and cost of the model (README, "The protocol").

    ``speed`` is MMSeg's Inf time, ``speed_fast`` the same timing under this package's
    inference settings; ``memory`` is MMSeg's Mem (``None`` when ``mem_steps=0``).
    """

    speed: SpeedResult
    speed_fast: SpeedResult
    memory: TrainingMemory | None
    params_m: float
    complexity: Complexity


@dataclass
class BenchmarkRun:
    """State of one run; the notebook calls the steps in order, each returns what it found."""

    config: BenchmarkConfig
    root: Path | None = None
    run_dir: Path | None = None
    run_group: str | None = None
    datamodule: LoveDADataModule | None = None
    device: torch.device | None = None
    checkpoint: LoadedCheckpoint | None = None
    trained_as: TrainedAs | None = None
    training: TrainOutcome | None = None
    evaluation: Evaluation | None = None
    measurement: Measurement | None = None

    @property
    def _data(self) -> LoveDADataModule:
        return _require(self.datamodule, "prepare")

    @property
    def _folder(self) -> Path:
        return _require(self.run_dir, "prepare")

    @property
    def task(self) -> SegmentationTask:
        """The trained task (after :meth:`train`)."""
        return _require(self.training, "train").task

    # -- 1. data and run folder ----------------------------------------------------------------

    def prepare(self) -> BenchmarkRun:
        """Seed, resolve the data, validate it up front, claim the run folder, save the parameters."""
        c = self.config
        if c.results_dir:  # a file, or not writable: fail before the data is read
            check_output_folder(c.results_dir, "results_dir")
        L.seed_everything(c.seed, workers=True, verbose=False)
        self.root = resolve_data_root(c.data_root)
        self.device = resolve_device(c.accelerator)
        recipe = c.training_recipe
        if c.checkpoint:
            self.checkpoint = self._load_checkpoint(c.checkpoint)
        ckpt = self.checkpoint
        self.trained_as = TrainedAs(
            crop_size=(ckpt.crop_size if ckpt else None) or recipe.crop_size,
            lr_schd=ckpt.global_step if ckpt else recipe.max_steps,
            batch_size=(ckpt.batch_size if ckpt else None) or recipe.batch_size,
        )
        self.datamodule = build_datamodule(
            recipe.replace(crop_size=self.trained_as.crop_size), self.root,
            train_scenes=c.train_scenes, eval_scenes=c.eval_scenes, eval_split=c.eval_split,
            eval_batch_size=c.eval_batch_size, num_workers=c.num_workers, seed=c.seed,
            limit_eval_images=c.limit_eval_images,
        )
        self.datamodule.setup(None if not c.checkpoint else "validate")
        self.run_group = run_group_for(c.model, self.datamodule.synthetic, self.trained_as.crop_size,
                                       self.trained_as.lr_schd, c.train_scenes,
                                       eval_split=self.datamodule.eval_split)
        self.run_dir = self._run_dir(self.run_group)
        write_json_atomic(self.run_dir / PARAMS_FILE, c.to_dict())
        c.write(self.run_dir, self.root)
        return self

    def _results_dir(self) -> Path:
        """``results_dir``, else the project's: without one, a run on the synthetic mini-LoveDA
        (known once the data is set up) is demo output, not a result."""
        if self.config.results_dir:
            return Path(self.config.results_dir)
        synthetic = self.datamodule is not None and self.datamodule.synthetic
        return DEMO_RESULTS_DIR if synthetic else RESULTS_DIR

    def _run_dir(self, group: str) -> Path:
        # A run_name's newest folder without a record, that no live run holds, is resumed (left
        # by an interrupted run, or claimed for this notebook by the suite); one a live run
        # holds is refused; one with a record is never written again. Without a run_name: a
        # fresh folder of the group.
        name = self.config.run_name
        return claim_run_dir(self._results_dir(), group, name, resume=name is not None)

    def _load_checkpoint(self, path: str) -> LoadedCheckpoint:
        loaded = load_checkpoint(Path(path))
        if loaded.task.model_name != self.config.model:
            raise CheckpointError(
                f"checkpoint {loaded.path} holds model {loaded.task.model_name!r} but model="
                f"{self.config.model!r}; pass model={loaded.task.model_name!r}"
            )
        return loaded

    # -- 2. training ---------------------------------------------------------------------------

    def train(self) -> TrainOutcome:
        """Fit the model (resuming from ``last.ckpt`` in the run folder), or keep the checkpoint's."""
        c = self.config
        if self.checkpoint is not None:
            ckpt = self.checkpoint
            self.training = TrainOutcome(
                steps=ckpt.global_step, devices=None, seconds=None, precision=None, peak_memory_gb=None,
                memory_source=None, final_loss=None, checkpoint=ckpt.path, resumed_from=None,
                task=ckpt.task,
            )
        else:
            self.training = fit(
                c.training_recipe, self._data, self._folder, model=c.model,
                channels_last=bool(c.channels_last), accelerator=c.accelerator, devices=c.devices,
                strategy=c.strategy, num_nodes=c.num_nodes, progress=c.progress,
                allow_cpu=c.allow_cpu,
            )
        return self.training

    # -- 3. evaluation -------------------------------------------------------------------------

    def _model(self) -> torch.nn.Module:
        model = self.task.model.to(self.device).eval()
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _evaluate(self, ms_flip: bool, save: bool) -> EvaluationResult:
        c = self.config
        return evaluate(
            self._model(), self._data.val_dataloader(), device=self.device, ms_flip=ms_flip,
            mode=c.eval_mode, window=c.slide_window, stride=c.slide_stride, amp=c.eval_amp,
            channels_last=c.channels_last, progress=c.progress,
            save_predictions_dir=self._folder / "predictions" if save else None,
        )

    def evaluate(self) -> Evaluation:
        """Whole-tile (or sliding-window) evaluation on the eval split, then ms+flip if asked
        (and if anything was scored: on the Test split it would predict every tile 12 times
        for nothing)."""
        single = self._evaluate(ms_flip=False, save=self.config.save_predictions)
        scored = single.scores is not None
        ms_flip = self._evaluate(ms_flip=True, save=False) if self.config.ms_flip and scored else None
        save_run_tiles(self._folder, single, ms_flip)
        self.evaluation = Evaluation(single=single, ms_flip=ms_flip)
        return self.evaluation

    def save_visuals(self) -> list[Path]:
        """Predictions for a few fixed tiles (the same for every model) under ``visuals/``."""
        n = self.config.visual_tiles
        if n <= 0:
            return []
        base = _base(self._data.eval_dataset)
        indices = visual_tile_indices(base, n)
        loader = DataLoader(Subset(base, indices), batch_size=1)
        evaluate(self._model(), loader, device=self.device, mode=self.config.eval_mode,
                 window=self.config.slide_window, stride=self.config.slide_stride,
                 save_predictions_dir=self._folder / "visuals")
        return sorted((self._folder / "visuals").rglob("*.png"))

    def scores_table(self):
        """Per-class IoU (%) with the overall and per-scene mIoU, plain and ms+flip side by side
        (on the Test split, which has no masks: what was predicted and where it was saved)."""
        import pandas as pd

        evaluation = _require(self.evaluation, "evaluate")
        if evaluation.single.scores is None:
            saved = evaluation.single.predictions_dir
            return pd.DataFrame({"predicted tiles": [evaluation.single.n_images],
                                 "scored tiles": [evaluation.single.n_scored],
                                 "predictions": [str(saved) if saved else "not saved"]})
        columns = {"whole" if self.config.eval_mode == "whole" else "slide": evaluation.single}
        if evaluation.ms_flip is not None:
            columns["ms+flip"] = evaluation.ms_flip
        rows: dict[str, dict[str, float | None]] = {}
        for label, result in columns.items():
            rows.setdefault("mIoU", {})[label] = result.scores.miou
            for scene, miou in _per_scene(result).items():
                rows.setdefault(f"mIoU {scene}", {})[label] = miou
            rows.setdefault("aAcc", {})[label] = result.scores.accuracy
            for name, iou in result.scores.per_class_iou.items():
                rows.setdefault(f"IoU {name}", {})[label] = iou
        return (pd.DataFrame(rows).T.astype(float) * 100).round(2)

    def plot_visuals(self):
        """Image, ground truth, this model's prediction and its error map on the comparison
        tiles (the figure the results notebook draws for every model side by side); None
        with ``visual_tiles=0``."""
        from ..visuals.comparison import TilePredictions, plot_prediction_grid, read_prediction

        if self.config.visual_tiles <= 0:
            return None
        base = _base(self._data.eval_dataset)
        rows = []
        for index in visual_tile_indices(base, self.config.visual_tiles):
            sample = base[index]
            split, scene, name = sample["split"], sample["scene"], sample["name"]
            mask = sample.get("mask")
            rows.append(
                TilePredictions(
                    title=f"{split}/{scene}/{name}",
                    image=sample["image"],
                    target=None if mask is None else mask.numpy(),
                    predictions=[read_prediction(self._folder / "visuals" / split / scene / name)],
                )
            )
        title = "Predictions on the comparison tiles"
        return plot_prediction_grid(rows, [self.config.model], title)

    # -- 4. measurements -----------------------------------------------------------------------

    def measure(self) -> Measurement:
        """fps by MMSeg's definition and under our settings, MMSeg's Mem (a probe training 4
        images in fp32 at this row's crop, in a fresh process), parameters and multiply-adds,
        as in README, "The protocol"."""
        c = self.config
        device = _require(self.device, "prepare")
        model = self._model()
        size = c.fps_size or _require(self.datamodule, "prepare").eval_tile_size()[0]
        n, warmup = c.fps_images, c.fps_warmup
        speed = measure_fps(model, size=size, n_images=n, warmup=warmup, device=device)
        # The same timing as evaluate() runs the model (its AMP and memory-format rules).
        fast = measure_fps_fast(model, size=size, n_images=n, warmup=warmup, device=device,
                                channels_last=c.channels_last)
        memory = None
        if c.mem_steps:
            crop = _require(self.trained_as, "prepare").crop_size
            memory = measure_training_memory(c.model, crop, device, steps=c.mem_steps)
        self.measurement = Measurement(
            speed=speed, speed_fast=fast, memory=memory, params_m=count_params(model),
            complexity=count_complexity(model, size=c.flops_size),
        )
        return self.measurement

    # -- 5. the record -------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """The results record, built from the steps' outcomes (keys: docs/CONTRACTS.md)."""
        c = self.config
        trained_as = _require(self.trained_as, "prepare")
        training = _require(self.training, "train")
        evaluation = _require(self.evaluation, "evaluate")
        measurement = _require(self.measurement, "measure")
        spec, model = get_spec(c.model), training.task.model
        single, ms = evaluation.single, evaluation.ms_flip
        scores, ms_scores = single.scores, (ms.scores if ms else None)
        speed, fast, memory = measurement.speed, measurement.speed_fast, measurement.memory
        dataset = self._data.describe()
        dataset["n_images"] = single.n_images
        ci = uncertainty_fields(single, ms)
        unscored = dict.fromkeys(CLASS_NAMES)  # the Test split: no mask, no IoU
        return check_record_keys({
            "schema": RECORD_SCHEMA,
            "run_name": self._folder.name,
            "run_group": self.run_group,
            "status": "complete",
            "model": c.model,
            "method": spec.method,
            "backbone": spec.backbone,
            "pretrained": getattr(model, "pretrained", c.training_recipe.pretrained),
            "normalization": getattr(model, "normalization", None),
            "crop_size": trained_as.crop_size,
            "lr_schd": trained_as.lr_schd,
            "batch_size": trained_as.batch_size,
            "devices": training.devices,
            "mem_gb": memory.gb if memory else None,
            "mem_source": memory.source if memory else None,
            "mem_protocol": memory.protocol() if memory else None,
            "train_mem_gb": training.peak_memory_gb,
            "fps": speed.fps,
            "fps_spread": speed.fps_spread,
            "fps_size": speed.size,
            "fps_images": speed.n_images,
            "fps_warmup": speed.warmup,
            "fps_fast": fast.fps,
            "fps_fast_spread": fast.fps_spread,
            "fps_fast_settings": fast.settings.to_dict(),
            "device": speed.device,
            "precision": training.precision,
            "amp": speed.amp,
            "eval_amp": single.settings["amp"],
            "miou": single.miou,
            "miou_ms_flip": ms.miou if ms else None,
            "accuracy": scores.accuracy if scores else None,
            "mean_f1": scores.mean_f1 if scores else None,
            "per_class_iou": scores.per_class_iou if scores else unscored,
            "per_class_iou_ms_flip": (ms_scores.per_class_iou if ms_scores else unscored) if ms else None,
            "per_scene_miou": _per_scene(single),
            "per_scene_miou_ms_flip": _per_scene(ms) if ms else None,
            "miou_ci": ci["miou_ci"],
            "miou_ms_flip_ci": ci["miou_ms_flip_ci"],
            "per_scene_miou_ci": ci["per_scene_miou_ci"],
            "bootstrap": ci["bootstrap"],
            "params_m": measurement.params_m,
            "gmacs": measurement.complexity.gmacs,
            "gflops": measurement.complexity.gflops,
            "flops_size": measurement.complexity.size,
            "eval_mode": c.eval_mode,
            "dataset": dataset,
            "train_seconds": training.seconds,
            "train_segments": len(training.segments) or None,
            "resumed_from_step": training.resumed_from_step,
            "eval_seconds": single.seconds,
            "saved_predictions": _saved_predictions(single, dataset["split"]),
            "final_loss": training.final_loss,
            "checkpoint": _relative(training.checkpoint, self._folder),
            "config": c.to_dict(),
            "git_commit": git_commit(),
            "versions": versions(),
            "seed": c.seed,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        })

    def write_record(self) -> Path:
        """Write ``metrics.json`` atomically, after checking it against the contract."""
        record = self.record()
        problems = validate_record(record)
        if problems:
            raise ValueError("the record does not meet the contract: " + "; ".join(problems))
        path = self._folder / METRICS_FILE
        write_json_atomic(path, record)
        release_run_dir(path.parent)  # the run is over: its folder is never written again
        return path


def _require[T](outcome: T | None, step: str) -> T:
    """The outcome of ``step``, which must have run before the one asking."""
    if outcome is None:
        raise RuntimeError(f"run.{step}() has not run yet: call the steps in order")
    return outcome


def visual_tile_indices(dataset, n: int) -> list[int]:
    """``n`` tiles spread over the scenes (first ones of each, in file order): same for every model."""
    by_scene: dict[str, list[int]] = {}
    for index, path in enumerate(dataset.files):
        by_scene.setdefault(Path(path["image"]).parent.parent.name, []).append(index)
    picks: list[int] = []
    queues = [list(v) for _, v in sorted(by_scene.items(), key=lambda kv: kv[0] != "Urban")]
    while len(picks) < n and any(queues):
        for q in queues:
            if q and len(picks) < n:
                picks.append(q.pop(0))
    return picks


def _base(dataset):
    """The full eval dataset behind a ``limit_eval_images`` subset."""
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def _per_scene(result) -> dict[str, float | None]:
    return {scene: (result.per_scene[scene].miou if scene in result.per_scene else None)
            for scene in ("urban", "rural")}


def _saved_predictions(result: EvaluationResult, split: str) -> int | None:
    """The prediction PNGs on disk for ``split`` (None when the evaluation saved none)."""
    if result.predictions_dir is None:
        return None
    return sum(1 for _ in (Path(result.predictions_dir) / split).glob("*/*.png"))


def _relative(path: Path | None, run_dir: Path) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def git_commit() -> str | None:
    """The checkout's commit, with ``-dirty`` when files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    out["cuda"] = torch.version.cuda or "none"
    return out

