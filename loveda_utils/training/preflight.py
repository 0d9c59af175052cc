"""Checks a fit runs before its first step, so a bad combination fails with its reason up front
instead of deep inside torch, minutes (or a job queue) later."""

from __future__ import annotations

import math

import lightning as L
from torch import nn
from torch.utils.data import DataLoader

from ..errors import ConfigError


def smallest_batch(n_samples: int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    """The fewest samples a training batch on one device can hold.

    Under DDP each process gets ``ceil(n_samples / world_size)`` samples (Lightning's
    ``DistributedSampler`` pads to equal shares), batched with the loader's ``drop_last``: the
    last, incomplete batch is dropped, or holds the remainder. 0 when a device gets no batch.

    >>> smallest_batch(10, 4, drop_last=False), smallest_batch(9, 4, drop_last=True)
    (2, 4)
    >>> smallest_batch(9, 4, drop_last=False, world_size=2)  # 5 per device: 4, then 1
    1
    """
    per_device = math.ceil(n_samples / max(1, world_size))
    if drop_last:
        return batch_size if per_device >= batch_size else 0
    return min(batch_size, per_device % batch_size or batch_size)


def check_train_batches(model: nn.Module, loader: DataLoader, world_size: int = 1,
                        name: str = "the model") -> None:
    """Refuse a training loader that gives a device no batch at all, or a batch of one sample
    to a model with BatchNorm layers.

    BatchNorm normalises each channel with the batch's own statistics in training: one sample
    gives statistics of a single image, and a BatchNorm after global pooling (ASPP's, PSP's
    image pooling) then sees one value per channel, where torch raises
    ``Expected more than 1 value per channel when training`` from inside the forward pass.

    Raises:
        ConfigError: naming ``batch_size`` (and the Train tiles a device gets) and the fix.
    """
    batch_size = loader.batch_size
    if batch_size is None:
        return  # a batch sampler decides: nothing to compute here
    n_samples = len(loader.dataset)  # type: ignore[arg-type]
    per_device = math.ceil(n_samples / max(1, world_size))
    smallest = smallest_batch(n_samples, batch_size, loader.drop_last, world_size)
    share = (f"each of the {world_size} devices gets {per_device} of the {n_samples} training "
             "tiles" if world_size > 1 else f"the training split has {n_samples} tiles")
    if smallest == 0:
        raise ConfigError(
            f"batch_size={batch_size}: {share}, fewer than one batch, and incomplete batches "
            f"are dropped: no training step would run; use batch_size <= {per_device}"
        )
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if smallest != 1 or not norms:
        return
    reason = (f"{name} has {len(norms)} BatchNorm layers, which need more than one sample per "
              "device in training (torch raises 'Expected more than 1 value per channel')")
    if batch_size == 1:
        raise ConfigError(f"batch_size=1: {reason}; use batch_size >= 2 (per device)")
    raise ConfigError(
        f"batch_size={batch_size}: {share}, which leaves a last batch of one sample, and "
        f"{reason}; use a batch_size that does not leave one tile over"
    )


def check_fit(task: L.LightningModule, datamodule: L.LightningDataModule, world_size: int) -> None:
    """The up-front checks of :func:`~loveda_utils.training.trainer.fit` on its data and model."""
    loader = datamodule.train_dataloader()
    if isinstance(loader, DataLoader):
        model = getattr(task, "model", task)
        check_train_batches(model, loader, world_size, name=getattr(task.hparams, "model", "the model"))
