"""The one training path: :func:`fit` a recipe on a data module into a run folder.

The ``train`` command, the benchmark notebook (``BenchmarkRun.train``), ``estimate`` and the
development benchmark's training section all build their pieces here: the data module
(:func:`build_datamodule`), the task (:meth:`SegmentationTask.from_recipe`) and the Trainer
(:func:`build_trainer`), so a recipe means the same run wherever it is trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from ..data.datamodule import LoveDADataModule
from ..data.transforms import Fidelity
from ..errors import CheckpointError, ConfigError
from ..runtime import device_type, training_precision
from .callbacks import PeakMemoryMonitor, RunCheckpoint
from .checkpoint import (
    CHECKPOINTS_DIR,
    RESUME_REMEDY,
    last_checkpoint,
    last_checkpoint_path,
    read_checkpoint,
)
from .preflight import check_fit
from .recipe import Recipe, checkpoint_interval
from .segments import SegmentLog, TrainingHistory, TrainSegment
from .sync_batchnorm import BatchNormSync
from .task import SegmentationTask


def build_datamodule(recipe: Recipe, data_root: str | Path | None = None, **options: Any) -> LoveDADataModule:
    """The LoveDA data module with ``recipe``'s crop, batch size (per device) and transforms'
    fidelity; ``options`` pass through (``train_scenes``, ``eval_split``, ``num_workers``, ...)."""
    return LoveDADataModule(data_root, batch_size=recipe.batch_size, crop_size=recipe.crop_size,
                            fidelity=cast(Fidelity, recipe.fidelity), **options)  # Recipe checked it


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
    """A Trainer for ``recipe`` with the benchmark's callbacks: ``checkpoints/last.ckpt`` for
    resuming (:class:`~loveda_utils.training.callbacks.RunCheckpoint`, every
    ``checkpoint_every`` steps, default :func:`~loveda_utils.training.recipe.checkpoint_interval`
    of the recipe's schedule), the segments it holds
    (:class:`~loveda_utils.training.segments.SegmentLog`), CSV and TensorBoard logs,
    learning-rate log, peak-memory monitor, progress bar.

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
    every = checkpoint_every or checkpoint_interval(recipe.max_steps)
    memory = PeakMemoryMonitor()
    callbacks: list[L.Callback] = [
        RunCheckpoint(dirpath=str(run_dir / CHECKPOINTS_DIR), every_n_train_steps=every),
        SegmentLog(memory),
        LearningRateMonitor(logging_interval="step"),
        memory,
        *(extra_callbacks or []),
    ]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(20, steps // 20 or 1))))
    # A new logs/version_N per (re)start: a resumed run appends a version, never overwrites one.
    version = f"version_{len(list((run_dir / 'logs').glob('version_*')))}"
    loggers = [CSVLogger(run_dir, name="logs", version=version),
               TensorBoardLogger(run_dir, name="logs", version=version)]
    settings = _TrainerSettings(accelerator, devices, strategy, num_nodes, recipe.precision)
    with settings.refusals_named():
        return L.Trainer(
            default_root_dir=run_dir,
            max_steps=steps,
            max_epochs=-1,
            **settings.trainer_kwargs(),
            benchmark=device_type(accelerator) == "cuda" and not deterministic,
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


#: What Lightning raises for settings it refuses (an unknown accelerator or strategy, devices the
#: accelerator cannot give, a precision it has no plugin for, a strategy whose package is absent).
_LIGHTNING_REFUSALS = (MisconfigurationException, ValueError, TypeError, ImportError)


@dataclass(frozen=True)
class _TrainerSettings:
    """The Trainer settings a user chooses (flags of ``train``, notebook parameters)."""

    accelerator: str
    devices: int | str | list[int]
    strategy: str
    num_nodes: int
    precision: str | None

    def trainer_kwargs(self) -> dict[str, Any]:
        return {
            "accelerator": self.accelerator,
            "devices": self.devices,
            "strategy": self.strategy,
            "num_nodes": self.num_nodes,
            "precision": training_precision(self.accelerator, self.precision),
            # Applied by the parallel strategies only: one device keeps plain BatchNorm.
            "sync_batchnorm": True,
            "plugins": [BatchNormSync(device_type(self.accelerator))],
        }

    @contextlib.contextmanager
    def refusals_named(self) -> Iterator[None]:
        """Lightning's refusal of these settings as one :class:`ConfigError` line naming them."""
        try:
            yield
        except _LIGHTNING_REFUSALS as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self).items())
            reason = " ".join(str(exc).split()).rstrip(".")  # Lightning's messages span lines
            raise ConfigError(f"Trainer settings {shown}: Lightning refuses them: {reason}; "
                              "change the one it names") from None


def check_trainer_settings(
    recipe: Recipe,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
) -> None:
    """Refuse, before a run folder is claimed or written, Trainer settings Lightning would refuse
    in :func:`build_trainer`: Lightning checks them itself, on a Trainer with no logger,
    checkpointing or callbacks (so nothing is written), which is then dropped.

    Raises:
        ConfigError: naming the settings and Lightning's reason.
    """
    settings = _TrainerSettings(accelerator, devices, strategy, num_nodes, recipe.precision)
    # Its device lines and warnings are the real Trainer's to print, once.
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with settings.refusals_named(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **settings.trainer_kwargs())
    finally:
        quiet.setLevel(level)


@dataclass(frozen=True)
class TrainOutcome:
    """What a training run gave (or, for an evaluated checkpoint, what is known of it).

    A run trained in several segments (stopped and resumed) reports its whole training
    (:class:`~loveda_utils.training.segments.TrainingHistory`), not only this fit's.

    Attributes:
        steps: optimiser steps the weights have had (the Trainer's ``global_step``).
        devices: training processes over all nodes (the Trainer's ``world_size``): a step's
            global batch is the recipe's ``batch_size`` (per device) times this.
        seconds: training time summed over the segments (``None`` when nothing was trained
            here, or a segment's time is unknown).
        precision: Lightning's precision the fit ran in.
        peak_memory_gb, memory_source: peak training memory of the segments and how it was read
            (:class:`~loveda_utils.training.callbacks.PeakMemoryMonitor`).
        final_loss: the training loss logged at the last step.
        checkpoint: the checkpoint holding the weights (``last.ckpt``, or the one evaluated).
        resumed_from: the ``last.ckpt`` this fit continued from.
        resumed_from_step: the step the last segment resumed from (``None``: trained in one go).
        segments: the run's training segments, oldest first (empty when nothing was trained here).
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
    resumed_from_step: int | None = None
    segments: tuple[TrainSegment, ...] = ()
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

    A ``last.ckpt`` left in ``run_dir`` by an interrupted run is resumed, with these settings (a
    longer ``max_steps`` continues the run; ``resume=False``: start over). It is checked first,
    so a damaged one, or one past ``max_steps``, stops with a
    :class:`~loveda_utils.errors.CheckpointError` that says what to do; so does a training
    batch the model cannot take (:func:`~loveda_utils.training.preflight.check_fit`).
    Interrupted (Ctrl-C), the fit saves its steps to ``last.ckpt`` and raises
    ``KeyboardInterrupt`` saying so (Lightning ends with ``sys.exit(1)``, which reads as a
    failure and says nothing of the checkpoint); on SIGTERM, Lightning's ``SIGTERMException``
    after the same save.

    ``max_steps`` stops the fit early without shortening the schedule (``estimate`` times a few
    steps this way); ``trainer_options`` go to :func:`build_trainer` (``accelerator``,
    ``devices``, ``strategy`` for DDP, ``extra_callbacks``, ``progress``, ...).
    ``cudnn.benchmark`` is back to its previous value after the fit (fps timing runs without it).

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
    resumed_from = last_checkpoint(run_dir) if resume else None
    name = model.model_name if isinstance(model, SegmentationTask) else model
    if resumed_from is not None:
        _check_resumable(resumed_from, name, steps)
    task = model if isinstance(model, SegmentationTask) else SegmentationTask.from_recipe(
        model, recipe, channels_last=channels_last)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    try:
        trainer = build_trainer(run_dir, recipe, max_steps=max_steps, **trainer_options)
        check_fit(task, datamodule, trainer.world_size)
        with _sigint_kept():
            try:
                trainer.fit(task, datamodule=datamodule, ckpt_path=resumed_from, weights_only=True)
            except SystemExit as exc:
                # Lightning turns Ctrl-C into sys.exit(1) after its on_exception hooks saved the
                # steps done (RunCheckpoint); say so, as an interrupt (SIGTERM's exception passes).
                if trainer.interrupted and not isinstance(exc, SIGTERMException):
                    raise KeyboardInterrupt(_interrupted(trainer, run_dir, resumed_from)) from None
                raise
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
    log = _callback(trainer, SegmentLog)
    history = TrainingHistory(log.segments(trainer, task))
    return TrainOutcome(
        steps=trainer.global_step,
        devices=trainer.world_size,
        seconds=history.seconds,
        precision=str(trainer.precision),
        peak_memory_gb=history.peak_memory_gb,
        memory_source=history.memory_source,
        final_loss=history.final_loss,
        checkpoint=last_checkpoint(run_dir),
        resumed_from=resumed_from,
        task=task,
        trainer=trainer,
        resumed_from_step=history.resumed_from_step,
        segments=history.segments,
    )


def _callback[C: L.Callback](trainer: L.Trainer, kind: type[C]) -> C:
    """The Trainer's callback of ``kind`` (:func:`build_trainer` adds one of each)."""
    callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning
    return next(cb for cb in callbacks if isinstance(cb, kind))


def _check_resumable(path: Path, model: str, max_steps: int) -> None:
    """Refuse a ``last.ckpt`` that is damaged, of another model (Lightning would fail inside
    ``load_state_dict``), or already past ``max_steps`` (the fit would stop at once and report
    steps its settings do not have)."""
    data = read_checkpoint(path, remedy=RESUME_REMEDY)
    trained = (data.get("hyper_parameters") or {}).get("model")
    if trained is not None and trained != model:
        raise CheckpointError(
            f"checkpoint {path} holds model {trained!r}, not model={model!r}: resume it with "
            f"model={trained!r}, or {RESUME_REMEDY}"
        )
    step = int(data.get("global_step", 0))
    if step > max_steps:
        raise CheckpointError(
            f"checkpoint {path} is at step {step}, past max_steps={max_steps}: resume it with "
            f"max_steps >= {step}, or {RESUME_REMEDY}"
        )


def _interrupted(trainer: L.Trainer, run_dir: Path, resumed_from: Path | None) -> str:
    checkpoint = _callback(trainer, RunCheckpoint)
    saved = checkpoint.saved_step
    if saved is None and resumed_from is None:
        return f"training interrupted at step {trainer.global_step}, before any checkpoint was saved"
    holds = f"step {saved}" if saved is not None else "the step it resumed from"
    return (f"training interrupted at step {trainer.global_step}; {last_checkpoint_path(run_dir)} "
            f"holds {holds}: run again into the same run folder to resume from it")


@contextlib.contextmanager
def _sigint_kept() -> Iterator[None]:
    """Restore the SIGINT handler after a fit: on Ctrl-C Lightning ignores SIGINT for its
    shutdown and never restores it, so a notebook kernel could not be interrupted again."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
