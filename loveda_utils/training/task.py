"""``SegmentationTask``: the Lightning step logic for any registry model, and a Trainer factory.

Follows MMSeg's LoveDA schedule by default: SGD (lr 0.01, momentum 0.9, weight decay 5e-4),
poly decay of power 0.9 to ``min_lr`` 1e-4 *per iteration*, cross-entropy ignoring no-data, and
torchvision's auxiliary head weighted 0.4 (as MMSeg's FCN auxiliary heads). Side concerns
(checkpoints, logging, memory, progress) are Lightning callbacks and loggers, see
:func:`build_trainer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..data.classes import IGNORE_INDEX, NUM_CLASSES
from ..errors import CheckpointError, ConfigError
from ..evaluation.inference import labels_from_logits
from ..evaluation.metrics import PerSceneConfusion, scores_from_confusion
from ..models import build_model
from .callbacks import PeakMemoryMonitor

OPTIMIZERS = ("sgd", "adamw")


def poly_factor(step: int, max_steps: int, power: float, base_lr: float, min_lr: float) -> float:
    """MMSeg's ``PolyLR`` (with ``eta_min``) as a multiplier of ``base_lr`` at ``step``."""
    progress = min(step, max_steps) / max(1, max_steps)
    lr = (base_lr - min_lr) * (1 - progress) ** power + min_lr
    return lr / base_lr


class SegmentationTask(L.LightningModule):
    """Train and validate one registry model on LoveDA batches (uint8 images, uint8 masks)."""

    def __init__(
        self,
        model: str = "deeplabv3plus_resnet50",
        num_classes: int = NUM_CLASSES,
        pretrained: str = "default",
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        max_steps: int = 80_000,
        poly_power: float = 0.9,
        min_lr: float = 1e-4,
        aux_weight: float = 0.4,
        channels_last: bool = False,
    ) -> None:
        """Args:
        model: a name from :func:`loveda_utils.models.registry.available_models`.
        pretrained: ``"default"`` (the registry entry's own: ImageNet, or its EO weights),
            ``"none"``, ``"imagenet"``, a torchgeo weights name or a state-dict path.
        optimizer: ``"sgd"`` (MMSeg) or ``"adamw"``.
        max_steps: length of the poly schedule (the run's Lr schd).
        aux_weight: weight of the auxiliary head's loss (models without one ignore it).
        channels_last: NHWC memory format (faster convolutions on recent GPUs and CPUs).
        """
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if max_steps < 1:
            raise ConfigError(f"max_steps={max_steps}: the schedule needs at least one step")
        self.save_hyperparameters()
        self.model = build_model(model, num_classes=num_classes, pretrained=pretrained)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Labels come from labels_from_logits (always in range): no range check per batch.
        self.val_confusion = PerSceneConfusion(num_classes, validate=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self._prepare(images))

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def loss(self, logits: torch.Tensor, aux: torch.Tensor | None, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        target = mask.long()
        main = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        out = {"loss_main": main, "loss": main}
        if aux is not None and self.hparams.aux_weight > 0:
            out["loss_aux"] = F.cross_entropy(aux, target, ignore_index=IGNORE_INDEX)
            out["loss"] = main + self.hparams.aux_weight * out["loss_aux"]
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, aux = self.model.forward_train(self._prepare(batch["image"]))
        losses = self.loss(logits, aux, batch["mask"])
        size = batch["image"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        if "loss_aux" in losses:
            self.log("train/loss_aux", losses["loss_aux"], batch_size=size)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["mask"].long(), ignore_index=IGNORE_INDEX)
        self.log("val/loss", loss, batch_size=batch["image"].shape[0], sync_dist=True)
        labels = labels_from_logits(logits)  # argmax of NCHW logits is slow on the CPU
        self.val_confusion.update(labels, batch["mask"], batch.get("scene"))

    def on_validation_epoch_start(self) -> None:
        self.val_confusion.reset()

    def on_validation_epoch_end(self) -> None:
        # One confusion matrix over the whole split (MMSeg), summed across DDP ranks.
        matrix = self.val_confusion.overall.matrix.to(self.device)
        if self.trainer.world_size > 1:
            matrix = self.trainer.strategy.reduce(matrix.float(), reduce_op="sum").round().long()
        scores = scores_from_confusion(matrix.cpu())
        self.log("val/miou", float(scores.miou), prog_bar=True, sync_dist=False)
        self.log("val/acc", float(scores.accuracy), sync_dist=False)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: poly_factor(step, hp.max_steps, hp.poly_power, hp.lr, min(hp.min_lr, hp.lr)),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_task(checkpoint: str | Path, map_location: str | torch.device = "cpu") -> SegmentationTask:
    """Load a task from a Lightning checkpoint, without fetching the pretrained weights again.

    Raises:
        CheckpointError: naming the file when it is missing, unreadable or not one of ours.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint={str(checkpoint)!r} does not exist; pass a .ckpt written by training")
    try:
        data = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or "state_dict" not in data or "hyper_parameters" not in data:
        raise CheckpointError(f"checkpoint {path} is not a SegmentationTask checkpoint (no state_dict/hyper_parameters)")
    hparams = dict(data["hyper_parameters"])
    trained_from = hparams.get("pretrained", "none")
    hparams["pretrained"] = "none"  # the checkpoint holds the trained weights already
    try:
        task = SegmentationTask(**hparams)
        task.load_state_dict(data["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit model {hparams.get('model')!r}: {exc}") from exc
    # Report what the weights were trained from, and the normalisation restored with them.
    model = task.model
    model.pretrained = str(trained_from)
    mean, std = (", ".join(f"{v:.1f}" for v in t.flatten().tolist()) for t in (model.mean, model.std))
    model.normalization = f"mean=({mean}), std=({std}) on 0..255, restored from {path.name}"
    return task


def build_trainer(
    run_dir: str | Path,
    *,
    max_steps: int,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str | None = None,
    gradient_clip_val: float | None = None,
    checkpoint_every: int | None = None,
    val_check_interval: int | None = None,
    log_every_n_steps: int = 10,
    progress: bool = True,
    deterministic: bool | str = False,
    extra_callbacks: list[L.Callback] | None = None,
) -> L.Trainer:
    """A Trainer with the benchmark's callbacks: checkpoints (``last.ckpt`` for resuming), CSV and
    TensorBoard logs, learning-rate log, peak-memory monitor, progress bar.

    ``precision=None`` picks ``"16-mixed"`` on CUDA (``"bf16-mixed"`` where supported) and 32-bit
    elsewhere. ``devices``/``strategy``/``num_nodes`` pass through to Lightning (e.g. ``"ddp"``).
    """
    run_dir = Path(run_dir)
    if precision is None:
        precision = default_precision(accelerator)
    every = checkpoint_every or max(1, min(max_steps, 1000))
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                        every_n_train_steps=every),
        LearningRateMonitor(logging_interval="step"),
        PeakMemoryMonitor(),
        *(extra_callbacks or []),
    ]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(20, max_steps // 20 or 1))))
    # A new logs/version_N per (re)start: a resumed run appends a version, never overwrites one.
    version = f"version_{len(list((run_dir / 'logs').glob('version_*')))}"
    loggers = [CSVLogger(run_dir, name="logs", version=version),
               TensorBoardLogger(run_dir, name="logs", version=version)]
    return L.Trainer(
        default_root_dir=run_dir,
        max_steps=max_steps,
        max_epochs=-1,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        precision=precision,
        gradient_clip_val=gradient_clip_val,
        callbacks=callbacks,
        logger=loggers,
        log_every_n_steps=max(1, min(log_every_n_steps, max_steps)),
        val_check_interval=val_check_interval,
        check_val_every_n_epoch=None if val_check_interval else 1,
        limit_val_batches=None if val_check_interval else 0,
        num_sanity_val_steps=0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=deterministic,
    )


def default_precision(accelerator: str = "auto") -> str:
    """Mixed precision where it pays (CUDA), full precision elsewhere."""
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not on_cuda:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """``<run_dir>/checkpoints/last.ckpt`` when a previous run left one (for resuming)."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def fit(
    model: str,
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    max_steps: int = 80_000,
    batch_size: int = 16,
    crop_size: int = 512,
    lr: float = 0.01,
    optimizer: str = "sgd",
    pretrained: str = "default",
    train_scenes: str = "both",
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str | None = None,
    num_workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[SegmentationTask, L.Trainer]:
    """Train one model into ``run_dir`` (resuming from its ``last.ckpt``): the script path for
    multi-GPU / multi-node training (``strategy="ddp"``), where a notebook cannot spawn processes."""
    from ..data.datamodule import LoveDADataModule

    L.seed_everything(seed, workers=True, verbose=False)
    datamodule = LoveDADataModule(data_root, train_scenes=train_scenes, batch_size=batch_size,
                                  crop_size=crop_size, num_workers=num_workers, seed=seed)
    task = SegmentationTask(model=model, pretrained=pretrained, optimizer=optimizer, lr=lr, max_steps=max_steps)
    trainer = build_trainer(run_dir, max_steps=max_steps, accelerator=accelerator, devices=devices,
                            strategy=strategy, num_nodes=num_nodes, precision=precision, progress=progress)
    trainer.fit(task, datamodule=datamodule, ckpt_path=last_checkpoint(run_dir))
    return task, trainer
