"""Settings shared by every path: device, batch, workers, rounds, memory format, AMP, threads.

Also what several paths build the same way: the model under test, its input batches in memory,
and Lightning's accelerator, precision and quiet logging.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from loveda_utils.data.datamodule import default_num_workers
from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.models import build_model
from loveda_utils.runtime import amp_dtype, autocast, channels_last_for, resolve_device

from .tiles import Tiles


@dataclass
class Settings:
    """What every timed path shares: device, batch, workers, rounds, memory format, AMP, and
    the machine's cores and torch's threads (set before the settings are made)."""

    device: torch.device
    batch_size: int
    workers: int
    rounds: int
    channels_last: bool
    amp_dtype: torch.dtype | None
    threads: int
    cpus: int

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The run's settings: the package's fast inference settings (autocast on CUDA, channels-last
    where it pays, as ``loveda_utils.benchmark.measure.fast_settings``), which every path is
    given explicitly, so the ceiling and our evaluation run alike (``evaluate()``'s own default
    is fp32)."""
    device = resolve_device(args.device)
    dtype = amp_dtype(device, None)
    return Settings(
        device=device,
        batch_size=args.batch_size,
        workers=default_num_workers() if args.workers is None else args.workers,
        rounds=args.rounds,
        channels_last=channels_last_for(device, dtype),
        amp_dtype=dtype,
        threads=torch.get_num_threads(),
        cpus=os.cpu_count() or 1,
    )


def random_model(name: str, settings: Settings, seed: int = 0) -> nn.Module:
    """Registry model ``name`` with random weights (the same in every run), in eval mode on the
    device, channels-last when the settings say so."""
    torch.manual_seed(seed)
    model = build_model(name, pretrained="none").eval().to(settings.device)
    if settings.channels_last:  # converted once, outside any timed path
        model = model.to(memory_format=torch.channels_last)
    return model


def loaded_batches(tiles: Tiles, settings: Settings) -> list[torch.Tensor]:
    """The tiles' images as uint8 batches on the device, as the evaluation feeds the model."""
    dataset = LoveDASegmentation(tiles.root, "val", tiles.scenes)
    images = [dataset[i]["image"] for i in range(len(dataset))]
    batches = []
    for i in range(0, len(images), settings.batch_size):
        batch = torch.stack(images[i : i + settings.batch_size]).to(settings.device)
        if settings.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        batches.append(batch)
    return batches


def quiet_lightning() -> contextlib.ExitStack:
    """Silence Lightning's and torchgeo's banners and advice for the timed runs."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        level = logger.level
        logger.setLevel(logging.ERROR)
        stack.callback(logger.setLevel, level)
    return stack


def lightning_accelerator(device: torch.device) -> tuple[str, int | list[int]]:
    """Lightning's ``accelerator`` and ``devices`` for ``device``."""
    if device.type == "cuda":
        return "gpu", [device.index or 0]
    if device.type == "mps":
        return "mps", 1
    return "cpu", 1


def lightning_precision(settings: Settings) -> str:
    """Lightning's ``precision`` matching the settings' autocast."""
    if settings.amp_dtype is None:
        return "32-true"
    return "bf16-mixed" if settings.amp_dtype == torch.bfloat16 else "16-mixed"
