"""The one training path: :func:`fit` a recipe on a data module into a run folder.

The ``train`` command, the benchmark notebook (``BenchmarkRun.train``), ``estimate`` and the
development benchmark's training section all build their pieces here: the data module
(:func:`build_datamodule`), the task (:meth:`SegmentationTask.from_recipe`) and the Trainer
(:func:`build_trainer`), so a recipe means the same run wherever it is trained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..data.datamodule import LoveDADataModule
from ..errors import ConfigError
from ..runtime import device_type, training_precision
from .callbacks import PeakMemoryMonitor
from .checkpoint import RESUME_REMEDY, last_checkpoint, read_checkpoint
from .recipe import Recipe
from .sync_batchnorm import BatchNormSync
from .task import SegmentationTask


def build_datamodule(recipe: Recipe, data_root: str | Path | None = None, **options: Any) -> LoveDADataModule:
    """The LoveDA data module with ``recipe``'s crop and batch size (per device); ``options`` pass
    through (``train_scenes``, ``eval_split``, ``num_workers``, ``seed``, ...)."""
    return LoveDADataModule(data_root, batch_size=recipe.batch_size, crop_size=recipe.crop_size, **options)


def build_trainer(
    run_dir: str | Path,
    recipe: Recipe,
    *,
    max_steps: int | None = None,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    checkpoint_every: int | None = None,
    val_check_interval: int | None = None,
    log_every_n_steps: int = 10,
    progress: bool = True,
    deterministic: bool | Literal["warn"] = False,
    extra_callbacks: list[L.Callback] | None = None,
) -> L.Trainer:
    """A Trainer for ``recipe`` with the benchmark's callbacks: checkpoints (``last.ckpt`` for
    resuming), CSV and TensorBoard logs, learning-rate log, peak-memory monitor, progress bar.

    ``max_steps`` stops earlier than the recipe's schedule (which the task keeps). The recipe's
    ``precision=None`` is :func:`loveda_utils.runtime.training_precision`'s choice.
    ``devices``/``strategy``/``num_nodes`` pass through to Lightning (e.g. ``"ddp"``); the
    recipe's ``batch_size`` is each device's, so ``devices`` multiplies the global batch (as
    MMSeg's ``4xb4``), and under DDP BatchNorm is synchronised over it (SyncBN, as MMSeg's LoveDA
    configs; :mod:`loveda_utils.training.sync_batchnorm`). On CUDA, cuDNN picks its fastest
    convolution algorithms (``cudnn.benchmark``, on in MMSeg's training runtime) unless
    ``deterministic``.
    """
    run_dir = Path(run_dir)
    steps = recipe.max_steps if max_steps is None else max_steps
    every = checkpoint_every or max(1, min(steps, 1000))
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                        every_n_train_steps=every),
        LearningRateMonitor(logging_interval="step"),
        PeakMemoryMonitor(),
        *(extra_callbacks or []),
    ]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(20, steps // 20 or 1))))
    # A new logs/version_N per (re)start: a resumed run appends a version, never overwrites one.
    version = f"version_{len(list((run_dir / 'logs').glob('version_*')))}"
    loggers = [CSVLogger(run_dir, name="logs", version=version),
               TensorBoardLogger(run_dir, name="logs", version=version)]
    return L.Trainer(
        default_root_dir=run_dir,
        max_steps=steps,
        max_epochs=-1,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        # Applied by the parallel strategies only: one device keeps plain BatchNorm.
        sync_batchnorm=True,
        plugins=[BatchNormSync(device_type(accelerator))],
        benchmark=device_type(accelerator) == "cuda" and not deterministic,
        precision=training_precision(accelerator, recipe.precision),  # type: ignore[arg-type]
        gradient_clip_val=recipe.gradient_clip_val,
        callbacks=callbacks,
        logger=loggers,
        log_every_n_steps=max(1, min(log_every_n_steps, steps)),
        val_check_interval=val_check_interval,
        check_val_every_n_epoch=None if val_check_interval else 1,
        limit_val_batches=None if val_check_interval else 0,
        num_sanity_val_steps=0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=deterministic,
    )


@dataclass(frozen=True)
class TrainOutcome:
    """What a training run gave (or, for an evaluated checkpoint, what is known of it).

    Attributes:
        steps: optimiser steps the weights have had (the Trainer's ``global_step``).
        devices: training processes over all nodes (the Trainer's ``world_size``): a step's
            global batch is the recipe's ``batch_size`` (per device) times this.
        seconds: wall time of this fit (``None`` when nothing was trained here).
        precision: Lightning's precision the fit ran in.
        peak_memory_gb, memory_source: peak training memory and how it was read
            (:class:`~loveda_utils.training.callbacks.PeakMemoryMonitor`).
        final_loss: the last logged training loss.
        checkpoint: the checkpoint holding the weights (``last.ckpt``, or the one evaluated).
        resumed_from: the ``last.ckpt`` this fit continued from.
    """

    steps: int
    devices: int | None
    seconds: float | None
    precision: str | None
    peak_memory_gb: float | None
    memory_source: str | None
    final_loss: float | None
    checkpoint: Path | None
    resumed_from: Path | None
    task: SegmentationTask = field(repr=False)
    trainer: L.Trainer | None = field(default=None, repr=False)


def fit(
    recipe: Recipe,
    datamodule: L.LightningDataModule,
    run_dir: str | Path,
    *,
    model: str | SegmentationTask,
    channels_last: bool = False,
    max_steps: int | None = None,
    resume: bool = True,
    allow_cpu: bool = False,
    **trainer_options: Any,
) -> TrainOutcome:
    """Train ``model`` (a registry name, or a task built already) by ``recipe`` into ``run_dir``.

    A ``last.ckpt`` left in ``run_dir`` by an interrupted run is resumed (``resume=False``:
    start over); it is checked first, so a damaged one stops with a
    :class:`~loveda_utils.errors.CheckpointError` that says what to do. ``max_steps`` stops the
    fit early without shortening the schedule (``estimate`` times a few steps this way);
    ``trainer_options`` go to :func:`build_trainer` (``accelerator``, ``devices``, ``strategy``
    for DDP, ``extra_callbacks``, ``progress``, ...). ``cudnn.benchmark`` is back to its previous
    value after the fit (fps timing runs without it).

    Raises:
        ConfigError: when a GPU recipe's full schedule would train on the CPU
            (:meth:`~loveda_utils.training.recipe.Recipe.refuses_cpu`), e.g. ``accelerator="auto"``
            finding no usable GPU, unless ``allow_cpu``.
    """
    run_dir = Path(run_dir)
    accelerator = trainer_options.get("accelerator", "auto")
    steps = recipe.max_steps if max_steps is None else max_steps
    if not allow_cpu and device_type(accelerator) == "cpu" and recipe.refuses_cpu(steps):
        why = (f"check nvidia-smi and that the driver supports torch's CUDA {torch.version.cuda}"
               if torch.version.cuda else "this torch build has no CUDA: install a CUDA build")
        raise ConfigError(
            f"recipe {recipe.name!r} trains {steps} steps, meant for a GPU, but "
            f"accelerator={accelerator!r} resolves to the CPU ({why}); pass allow_cpu=True "
            "(train --allow-cpu) to train on the CPU all the same"
        )
    task = model if isinstance(model, SegmentationTask) else SegmentationTask.from_recipe(
        model, recipe, channels_last=channels_last)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    try:
        trainer = build_trainer(run_dir, recipe, max_steps=max_steps, **trainer_options)
        resumed_from = last_checkpoint(run_dir) if resume else None
        if resumed_from is not None:
            read_checkpoint(resumed_from, remedy=RESUME_REMEDY)
        start = time.perf_counter()
        trainer.fit(task, datamodule=datamodule, ckpt_path=resumed_from, weights_only=True)
        seconds = time.perf_counter() - start
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
    memory = next(cb for cb in trainer.callbacks if isinstance(cb, PeakMemoryMonitor))
    loss = trainer.callback_metrics.get("train/loss")
    return TrainOutcome(
        steps=trainer.global_step,
        devices=trainer.world_size,
        seconds=seconds,
        precision=str(trainer.precision),
        peak_memory_gb=memory.peak_gb,
        memory_source=memory.source,
        final_loss=None if loss is None else float(loss),
        checkpoint=last_checkpoint(run_dir),
        resumed_from=resumed_from,
        task=task,
        trainer=trainer,
    )
