"""Measurements for the table: inference speed, training memory, parameters, FLOPs, device.

Protocol (README, "The protocol"; MMSeg-compatible):

* **Inf time (fps)**: batch 1 at the evaluation resolution (1024x1024), ``warmup`` untimed passes,
  then ``n_images`` timed ones; each timed pass is model forward + argmax with the device
  synchronised before the clock is read; data loading is not timed. Reported: the median fps
  and the interquartile range of the per-image fps (``fps_spread``), so one slow outlier (a
  cron job, a thermal dip) does not move the number.
* **Mem (GB)**: peak memory of training: ``torch.cuda.max_memory_allocated`` on CUDA, the
  process's peak resident set size elsewhere (as MMSeg reports for GPUs).
* **GFLOPs**: :class:`torch.utils.flop_counter.FlopCounterMode` at 1x3x1024x1024, counting a
  multiply-add as 2 FLOPs (MMSeg's fvcore/mmengine counters report multiply-adds: divide by 2
  to compare).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..runtime import amp_dtype, autocast, device_name, synchronize


@dataclass
class SpeedResult:
    """Inference speed of one model at one resolution."""

    fps: float  # median over the timed images
    fps_spread: float  # interquartile range of the per-image fps
    fps_mean: float
    n_images: int
    warmup: int
    size: int
    device: str
    amp: bool
    channels_last: bool



def measure_fps(
    model: nn.Module,
    *,
    size: int = 1024,
    n_images: int = 200,
    warmup: int = 5,
    device: torch.device | str | None = None,
    amp: bool | torch.dtype | None = None,
    channels_last: bool = False,
) -> SpeedResult:
    """Time ``model`` forward + argmax on batch-1 uint8 ``size`` x ``size`` images (protocol above)."""
    if n_images < 1:
        raise ValueError(f"n_images={n_images}: time at least one image")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    image = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    dtype = amp_dtype(device, amp)
    times = []
    with torch.inference_mode(), autocast(device, dtype):
        for i in range(warmup + n_images):
            synchronize(device)
            start = time.perf_counter()
            model(image).argmax(1)
            synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    per_image_fps = sorted(1.0 / t for t in times)
    quartiles = statistics.quantiles(per_image_fps, n=4) if len(times) > 1 else [per_image_fps[0]] * 3
    return SpeedResult(
        fps=1.0 / statistics.median(times),
        fps_spread=quartiles[2] - quartiles[0],
        fps_mean=len(times) / sum(times),
        n_images=n_images,
        warmup=warmup,
        size=size,
        device=device_name(device),
        amp=dtype is not None,
        channels_last=channels_last,
    )


def count_params(model: nn.Module) -> float:
    """Parameters in millions: every parameter, trainable or frozen (buffers such as
    BatchNorm's running statistics are not parameters and not counted)."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def count_gflops(model: nn.Module, size: int = 1024, device: torch.device | str | None = None) -> float:
    """GFLOPs of one forward pass at 1x3x``size``x``size`` (2 FLOPs per multiply-add)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device)
    model = model.eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(image)
    return counter.get_total_flops() / 1e9
