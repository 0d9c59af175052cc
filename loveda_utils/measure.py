"""Measurements for the table: inference speed, training memory, parameters, FLOPs, device.

Protocol (DESIGN.md section 3, MMSeg-compatible):

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

import contextlib
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import lightning as L
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

GB = 1024**3


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels so that a clock read means the work is done."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def resolve_device(accelerator: str = "auto") -> torch.device:
    """The device evaluation runs on, from a Lightning-style ``accelerator`` name."""
    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError(f"accelerator={accelerator!r} but CUDA is not available on this machine")
        return torch.device("cuda", torch.cuda.current_device())
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device: torch.device | str) -> str:
    """A readable device name for the table (GPU model, or the CPU model and its cores)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GB if sys.platform == "darwin" else peak * 1024 / GB  # bytes on macOS, KiB on Linux


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

    def to_dict(self) -> dict:
        return asdict(self)


def amp_dtype(device: torch.device, amp: bool | torch.dtype | None = None) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (``None`` = no autocast): the one AMP policy,
    shared by evaluation and fps timing so both run the model in the same precision.

    ``amp=None``: on for CUDA only; ``True``: on for any device; ``False``: off; a dtype: that.
    """
    if amp is None:
        amp = device.type == "cuda"
    if amp is False:
        return None
    if isinstance(amp, torch.dtype):
        return amp
    if device.type == "cuda":
        # Emulated bf16 (pre-Ampere GPUs) is slower than fp16: ask for native support only.
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native_bf16 else torch.float16
    if device.type == "cpu":
        return torch.bfloat16  # the dtype CPU autocast is built and tuned for
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    """Parameters in millions (every tensor that would be saved, trainable or not)."""
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


class PeakMemoryMonitor(L.Callback):
    """Records the peak training memory (GiB): CUDA allocator peak, or the process's peak RSS.

    The value lands in ``self.peak_gb`` and is logged as ``train/peak_mem_gb``.
    """

    def __init__(self) -> None:
        self.peak_gb: float | None = None
        self.source: str | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def _read(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            self.source = "torch.cuda.max_memory_allocated"
            return torch.cuda.max_memory_allocated(pl_module.device) / GB
        self.source = "peak RSS"
        return peak_rss_gb()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 or trainer.global_step % 50 == 0:
            pl_module.log("train/peak_mem_gb", self._read(pl_module), rank_zero_only=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.peak_gb = self._read(pl_module)


def cpu_threads() -> int:
    """Threads torch uses for CPU kernels (reported beside CPU timings)."""
    return torch.get_num_threads() or os.cpu_count() or 1
