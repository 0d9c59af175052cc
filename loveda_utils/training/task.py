"""``SegmentationTask``: the Lightning step logic for any registry model.

Cross-entropy ignoring no-data, the auxiliary head's loss added with its weight (as MMSeg's FCN
auxiliary heads), SGD or AdamW with poly decay *per iteration*. The numbers default to the
``mmseg`` recipe (``loveda_utils/training/recipe.py``); :meth:`SegmentationTask.from_recipe`
takes them from any recipe. Side concerns (checkpoints, logging, memory, progress) are Lightning
callbacks and loggers, see ``loveda_utils/training/trainer.py``.

The hyperparameters are plain values (no recipe object), so that a checkpoint loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

from ..data.classes import IGNORE_INDEX, NUM_CLASSES
from ..evaluation.inference import labels_from_logits
from ..evaluation.metrics import PerSceneConfusion, all_reduce_counts, scores_from_confusion
from ..models import build_model
from .recipe import MMSEG, Recipe

#: The recipe fields the task holds (crop and batch size belong to the data, precision and
#: clipping to the Trainer).
TASK_FIELDS = ("pretrained", "optimizer", "lr", "momentum", "weight_decay", "max_steps",
               "poly_power", "min_lr", "aux_weight", "layer_decay")


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
        pretrained: str = MMSEG.pretrained,
        optimizer: str = MMSEG.optimizer,
        lr: float = MMSEG.lr,
        momentum: float = MMSEG.momentum,
        weight_decay: float = MMSEG.weight_decay,
        max_steps: int = MMSEG.max_steps,
        poly_power: float = MMSEG.poly_power,
        min_lr: float = MMSEG.min_lr,
        aux_weight: float = MMSEG.aux_weight,
        layer_decay: float = MMSEG.layer_decay,
        channels_last: bool = False,
    ) -> None:
        """Args:
        model: a name from :func:`loveda_utils.models.registry.available_models`.
        pretrained: ``"default"`` (the registry entry's own: ImageNet, or its EO weights),
            ``"none"``, ``"imagenet"``, a torchgeo weights name or a state-dict path.
        optimizer, lr, momentum, weight_decay, max_steps, poly_power, min_lr, aux_weight,
            layer_decay: as :class:`~loveda_utils.training.recipe.Recipe` describes them.
        channels_last: NHWC memory format (faster convolutions on recent GPUs and CPUs).
        """
        super().__init__()
        # The recipe's own checks, on the fields the task holds; the typed copy the steps read
        # (the hyperparameters, saved in checkpoints, rebuild it when one is loaded).
        self.recipe = MMSEG.replace(pretrained=pretrained, optimizer=optimizer, lr=lr,
                                    momentum=momentum, weight_decay=weight_decay,
                                    max_steps=max_steps, poly_power=poly_power, min_lr=min_lr,
                                    aux_weight=aux_weight, layer_decay=layer_decay)
        self.channels_last = channels_last
        self.model_name = model
        self.save_hyperparameters()
        self.model = build_model(model, num_classes=num_classes, pretrained=pretrained)
        if layer_decay != 1:  # a model without layers refuses it now, not when training starts
            self.model.param_groups(lr, layer_decay, weight_decay)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Labels come from labels_from_logits (always in range): no range check per batch.
        self.val_confusion = PerSceneConfusion(num_classes, validate=False)
        #: The last validation's confusion matrix over the whole split (every rank's tiles).
        self.val_matrix: torch.Tensor | None = None

    @classmethod
    def from_recipe(cls, model: str, recipe: Recipe, *, channels_last: bool = False,
                    num_classes: int = NUM_CLASSES) -> SegmentationTask:
        """The task for ``model`` trained by ``recipe``."""
        return cls(model=model, num_classes=num_classes, channels_last=channels_last,
                   **{name: getattr(recipe, name) for name in TASK_FIELDS})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self._prepare(images))

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def loss(self, logits: torch.Tensor, aux: torch.Tensor | None, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        target = mask.long()
        main = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        out = {"loss_main": main, "loss": main}
        if aux is not None and self.recipe.aux_weight > 0:
            out["loss_aux"] = F.cross_entropy(aux, target, ignore_index=IGNORE_INDEX)
            out["loss"] = main + self.recipe.aux_weight * out["loss_aux"]
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
        # One confusion matrix over the whole split (MMSeg), summed across DDP ranks in int64.
        # Each tile is counted once: the data module gives every rank an unpadded shard.
        matrix = all_reduce_counts(self.val_confusion.overall.matrix.to(self.device)).cpu()
        self.val_matrix = matrix
        scores = scores_from_confusion(matrix)
        self.log("val/miou", float(scores.miou), prog_bar=True, sync_dist=False)
        self.log("val/acc", float(scores.accuracy), sync_dist=False)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        hp = self.recipe
        params: list[Any]
        if hp.layer_decay != 1:  # one group per layer and decay kind, each its own lr and wd
            params = self.model.param_groups(hp.lr, hp.layer_decay, hp.weight_decay)
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer: torch.optim.Optimizer
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        # MMSeg's PolyLR per parameter group: each decays from its own lr to min_lr.
        def poly(base: float) -> Callable[[int], float]:
            return lambda step: poly_factor(
                step, hp.max_steps, hp.poly_power, base, min(hp.min_lr, base)
            )

        factors = [poly(group["lr"]) for group in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
