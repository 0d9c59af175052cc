"""One benchmark run: train (or load) a model, evaluate it under the MMSeg protocol, measure it,
and write its results record. ``notebooks/03_benchmark.ipynb`` is a thin shell over this module.

The steps are separate methods so that the notebook shows each one (and a failure points at
it): :meth:`BenchmarkRun.prepare`, :meth:`~BenchmarkRun.train`, :meth:`~BenchmarkRun.evaluate`,
:meth:`~BenchmarkRun.measure`, :meth:`~BenchmarkRun.save_visuals`, :meth:`~BenchmarkRun.write_record`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from ..data.classes import normalize_scenes, normalize_split
from ..data.datamodule import LoveDADataModule
from ..data.root import resolve_data_root
from ..errors import CheckpointError, ConfigError
from ..evaluation.inference import evaluate
from ..files import write_json_atomic
from ..models.registry import get_spec
from ..paths import PROJECT_ROOT, RESULTS_DIR
from ..results.schema import RECORD_SCHEMA, check_record_keys, validate_record
from ..results.store import claim_run_dir, run_group_for, unfinished_run
from ..runtime import default_channels_last, resolve_device
from ..training.callbacks import PeakMemoryMonitor
from ..training.task import SegmentationTask, build_trainer, last_checkpoint, load_task
from .measure import count_gflops, count_params, measure_fps

#: Packages whose versions go into every record.
VERSIONED = ("torch", "torchvision", "torchgeo", "segmentation-models-pytorch", "timm", "lightning",
             "torchmetrics", "numpy", "pillow")


@dataclass
class BenchmarkConfig:
    """The parameters of ``03_benchmark.ipynb`` (the names of its papermill ``parameters`` cell).

    Defaults follow MMSeg's LoveDA protocol (meant for a GPU): 80k iterations at batch 16 with
    512 px crops, SGD lr 0.01, whole-tile evaluation on Val plus ms+flip, fps at 1024 px.
    """

    model: str = "deeplabv3_resnet101"
    data_root: str | None = None
    train_scenes: str = "both"
    eval_scenes: str = "both"
    eval_split: str = "val"
    pretrained: str = "default"
    checkpoint: str | None = None
    max_steps: int = 80_000
    batch_size: int = 16
    crop_size: int = 512
    lr: float = 0.01
    ms_flip: bool = True
    fps_images: int = 200
    limit_eval_images: int | None = None
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    precision: str | None = None
    results_dir: str | None = None
    save_predictions: bool = False
    run_name: str | None = None
    # Beyond the contract's names:
    strategy: str = "auto"
    num_nodes: int = 1
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    num_workers: int | None = None
    eval_batch_size: int = 1
    eval_mode: str = "whole"
    slide_window: int = 1024
    slide_stride: int = 768
    fps_size: int | None = 1024  # None: the eval tiles' size
    fps_warmup: int = 5
    flops_size: int = 1024
    gradient_clip_val: float | None = None
    channels_last: bool | None = None  # None: on for CPU and CUDA+AMP inference (faster there)
    visual_tiles: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        get_spec(self.model)  # unknown model -> the list of valid names, before anything runs
        normalize_split(self.eval_split)
        normalize_scenes(self.train_scenes)
        normalize_scenes(self.eval_scenes)
        for name in ("max_steps", "batch_size", "crop_size", "fps_images", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}: must be a positive integer")
        if self.limit_eval_images is not None and self.limit_eval_images < 1:
            raise ConfigError(f"limit_eval_images={self.limit_eval_images}: use None or a positive integer")
        if self.eval_mode not in ("whole", "slide"):
            raise ConfigError(f"eval_mode={self.eval_mode!r}: use 'whole' or 'slide'")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr}: must be positive")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> BenchmarkConfig:
        """Build from a dict of notebook variables, ignoring names that are not parameters."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BenchmarkRun:
    """State of one run; the notebook calls the steps in order."""

    config: BenchmarkConfig
    root: Path | None = None
    run_dir: Path | None = None
    datamodule: LoveDADataModule | None = None
    task: SegmentationTask | None = None
    device: torch.device | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    # -- 1. data and run folder ----------------------------------------------------------------

    def prepare(self) -> BenchmarkRun:
        """Seed, resolve the data, validate it up front, claim the run folder, save the parameters."""
        c = self.config
        L.seed_everything(c.seed, workers=True, verbose=False)
        self.root = resolve_data_root(c.data_root)
        self.device = resolve_device(c.accelerator)
        checkpoint_facts = self._inspect_checkpoint() if c.checkpoint else {}
        crop = checkpoint_facts.get("crop_size", c.crop_size)
        self.datamodule = LoveDADataModule(
            self.root, train_scenes=c.train_scenes, eval_scenes=c.eval_scenes, eval_split=c.eval_split,
            batch_size=c.batch_size, eval_batch_size=c.eval_batch_size, crop_size=crop,
            num_workers=c.num_workers, seed=c.seed, limit_eval_images=c.limit_eval_images,
        )
        self.datamodule.setup(None if not c.checkpoint else "validate")
        lr_schd = checkpoint_facts.get("lr_schd", c.max_steps)
        group = run_group_for(c.model, self.datamodule.synthetic, crop, lr_schd)
        self.run_dir = self._run_dir(group)
        self.facts.update({**checkpoint_facts, "run_group": group, "crop_size": crop, "lr_schd": lr_schd})
        write_json_atomic(self.run_dir / "params.json", c.to_dict())
        return self

    def _run_dir(self, group: str) -> Path:
        c = self.config
        results = Path(c.results_dir) if c.results_dir else RESULTS_DIR
        # A folder without a record is this run's own (pre-claimed by the suite, or left by an
        # interrupted run that we now resume); one with a record is never written again.
        return unfinished_run(results, c.run_name) or claim_run_dir(results, group, c.run_name)

    def _inspect_checkpoint(self) -> dict[str, Any]:
        path = Path(self.config.checkpoint)
        self.task = load_task(path)
        if self.task.hparams.model != self.config.model:
            raise CheckpointError(
                f"checkpoint {path} holds model {self.task.hparams.model!r} but model="
                f"{self.config.model!r}; pass model={self.task.hparams.model!r}"
            )
        data = torch.load(path, map_location="cpu", weights_only=False)
        dm = data.get("datamodule_hyper_parameters", {})
        facts = {"lr_schd": int(data.get("global_step", 0)), "checkpoint": str(path)}
        if "crop_size" in dm:
            facts["crop_size"] = int(dm["crop_size"])
        if "batch_size" in dm:
            facts["batch_size"] = int(dm["batch_size"])
        return facts

    # -- 2. training ---------------------------------------------------------------------------

    def train(self) -> SegmentationTask:
        """Fit the model (resuming from ``last.ckpt`` in the run folder), or keep the checkpoint's."""
        c = self.config
        if c.checkpoint:
            self.facts.update(mem_gb=None, mem_source=None, train_seconds=None, precision=None)
            return self.task
        self.task = SegmentationTask(
            model=c.model, pretrained=c.pretrained, optimizer=c.optimizer, lr=c.lr,
            weight_decay=c.weight_decay, max_steps=c.max_steps, channels_last=bool(c.channels_last),
        )
        trainer = build_trainer(
            self.run_dir, max_steps=c.max_steps, accelerator=c.accelerator, devices=c.devices,
            strategy=c.strategy, num_nodes=c.num_nodes, precision=c.precision,
            gradient_clip_val=c.gradient_clip_val, progress=c.progress,
        )
        resume = last_checkpoint(self.run_dir)
        start = time.perf_counter()
        trainer.fit(self.task, datamodule=self.datamodule, ckpt_path=resume)
        memory = next(cb for cb in trainer.callbacks if isinstance(cb, PeakMemoryMonitor))
        self.facts.update(
            mem_gb=memory.peak_gb, mem_source=memory.source, train_seconds=time.perf_counter() - start,
            precision=str(trainer.precision), resumed_from=str(resume) if resume else None,
            checkpoint=str(last_checkpoint(self.run_dir)) if last_checkpoint(self.run_dir) else None,
            final_loss=_float(trainer.callback_metrics.get("train/loss")),
        )
        return self.task

    # -- 3. evaluation -------------------------------------------------------------------------

    def _model(self) -> torch.nn.Module:
        model = self.task.model.to(self.device).eval()
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _evaluate(self, ms_flip: bool, save: bool):
        c = self.config
        return evaluate(
            self._model(), self.datamodule.val_dataloader(), device=self.device, ms_flip=ms_flip,
            mode=c.eval_mode, window=c.slide_window, stride=c.slide_stride,
            channels_last=c.channels_last, progress=c.progress,
            save_predictions_dir=self.run_dir / "predictions" if save else None,
        )

    def evaluate(self):
        """Whole-tile (or sliding-window) evaluation on the eval split, then ms+flip if asked."""
        single = self._evaluate(ms_flip=False, save=self.config.save_predictions)
        self.facts["eval"] = single
        self.facts["eval_ms_flip"] = self._evaluate(ms_flip=True, save=False) if self.config.ms_flip else None
        return single

    def save_visuals(self) -> list[Path]:
        """Predictions for a few fixed tiles (the same for every model) under ``visuals/``."""
        n = self.config.visual_tiles
        if n <= 0:
            return []
        base = _base(self.datamodule.eval_dataset)
        indices = visual_tile_indices(base, n)
        loader = DataLoader(Subset(base, indices), batch_size=1)
        evaluate(self._model(), loader, device=self.device, mode=self.config.eval_mode,
                 window=self.config.slide_window, stride=self.config.slide_stride,
                 save_predictions_dir=self.run_dir / "visuals")
        return sorted((self.run_dir / "visuals").rglob("*.png"))

    def scores_table(self):
        """Per-class IoU (%) with the overall and per-scene mIoU, plain and ms+flip side by side."""
        import pandas as pd

        columns = {"whole" if self.config.eval_mode == "whole" else "slide": self.facts["eval"]}
        if self.facts.get("eval_ms_flip") is not None:
            columns["ms+flip"] = self.facts["eval_ms_flip"]
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
        tiles (the figure the results notebook draws for every model side by side)."""
        from ..visuals.comparison import TilePredictions, plot_prediction_grid, read_prediction

        base = _base(self.datamodule.eval_dataset)
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
                    predictions=[read_prediction(self.run_dir / "visuals" / split / scene / name)],
                )
            )
        title = "Predictions on the comparison tiles"
        return plot_prediction_grid(rows, [self.config.model], title)

    # -- 4. measurements -----------------------------------------------------------------------

    def measure(self) -> dict[str, Any]:
        """fps (median, spread), parameters and FLOPs, as in README, "The protocol"."""
        c = self.config
        model = self._model()
        size = c.fps_size or self.datamodule.eval_tile_size()[0]
        # Time the model as evaluate() runs it (same memory-format rule).
        channels_last = c.channels_last
        if channels_last is None:
            channels_last = default_channels_last(self.device)
        speed = measure_fps(model, size=size, n_images=c.fps_images, warmup=c.fps_warmup,
                            device=self.device, channels_last=channels_last)
        self.facts.update(
            speed=speed, params_m=count_params(model), gflops=count_gflops(model, size=c.flops_size),
        )
        return {"fps": speed.fps, "fps_spread": speed.fps_spread, "params_m": self.facts["params_m"],
                "gflops": self.facts["gflops"], "device": speed.device}

    # -- 5. the record -------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        c, f = self.config, self.facts
        spec, model = get_spec(c.model), self.task.model
        single, ms = f["eval"], f.get("eval_ms_flip")
        speed = f["speed"]
        dataset = self.datamodule.describe()
        dataset["n_images"] = single.n_images
        return check_record_keys({
            "schema": RECORD_SCHEMA,
            "run_name": self.run_dir.name,
            "run_group": f["run_group"],
            "status": "complete",
            "model": c.model,
            "method": spec.method,
            "backbone": spec.backbone,
            "pretrained": getattr(model, "pretrained", c.pretrained),
            "normalization": getattr(model, "normalization", None),
            "crop_size": f["crop_size"],
            "lr_schd": f["lr_schd"],
            "batch_size": f.get("batch_size", c.batch_size),
            "mem_gb": f.get("mem_gb"),
            "mem_source": f.get("mem_source"),
            "fps": speed.fps,
            "fps_spread": speed.fps_spread,
            "fps_size": speed.size,
            "fps_images": speed.n_images,
            "device": speed.device,
            "precision": f.get("precision"),
            "amp": speed.amp,
            "miou": single.scores.miou,
            "miou_ms_flip": ms.scores.miou if ms else None,
            "accuracy": single.scores.accuracy,
            "mean_f1": single.scores.mean_f1,
            "per_class_iou": single.scores.per_class_iou,
            "per_class_iou_ms_flip": ms.scores.per_class_iou if ms else None,
            "per_scene_miou": _per_scene(single),
            "per_scene_miou_ms_flip": _per_scene(ms) if ms else None,
            "params_m": f["params_m"],
            "gflops": f["gflops"],
            "flops_size": c.flops_size,
            "eval_mode": c.eval_mode,
            "dataset": dataset,
            "train_seconds": f.get("train_seconds"),
            "eval_seconds": single.seconds,
            "final_loss": f.get("final_loss"),
            "checkpoint": _relative(f.get("checkpoint"), self.run_dir),
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
        path = self.run_dir / "metrics.json"
        write_json_atomic(path, record)
        return path


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


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _relative(path: str | None, run_dir: Path) -> str | None:
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


def run_benchmark(**params: Any) -> Path:
    """All steps in one call (what the notebook does cell by cell); returns the record's path."""
    run = BenchmarkRun(BenchmarkConfig(**params)).prepare()
    run.train()
    run.evaluate()
    run.save_visuals()
    run.measure()
    return run.write_record()

