"""Measurements for the table: inference speed, parameters and multiply-adds (training memory:
``loveda_utils/benchmark/memory.py``).

The definitions are MMSeg's (mmsegmentation 1.2.2, ``tools/analysis_tools/``), so the columns
compare with their model zoo (README, "The protocol"):

* **Inf time (fps)**, :func:`measure_fps`, as ``benchmark.py``: batch 1, fp32, NCHW,
  ``torch.backends.cudnn.benchmark = False``, the model in eval mode without gradients. Their
  loop runs 200 images and skips the first ``num_warmup = 5``, so 195 are timed: ``warmup``
  untimed passes, then ``n_images`` timed ones. For each image the normalisation (their
  ``data_preprocessor``) runs before the clock starts; the clock covers the forward pass, the
  resize of the logits to the input and the argmax, with the device synchronised before each
  clock read. fps = timed images / their total time (a mean: their
  ``(i + 1 - num_warmup) / pure_inf_time``). The interquartile range of the per-image fps is
  kept beside it (``fps_spread``): how steady the timing was.
* **Inf time, fast**, :func:`measure_fps_fast`: the same timing under this package's own
  inference settings (:func:`fast_settings`: autocast on CUDA, channels-last where it pays,
  as :func:`~loveda_utils.evaluation.loop.evaluate` runs), a separate, labelled figure and
  never MMSeg's column.
* **GMACs**, :func:`count_complexity`, as ``get_flops.py`` (mmengine's
  ``get_model_complexity_info``, after fvcore): one fused multiply-add is one "FLOP", so their
  "GFLOPs" are billions of multiply-adds. Convolutions, linear layers, matrix products and
  attention count their multiply-adds once (``torch.utils.flop_counter`` counts 2, halved
  here); normalisation, upsampling and adaptive pooling count mmengine's per-element terms
  (:data:`ELEMENTWISE_MACS`). ``gflops`` keeps ``torch.utils.flop_counter``'s total (2 per
  multiply-add of the first group, the rest not counted).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..evaluation.inference import labels_from_logits
from ..runtime import amp_dtype, autocast, channels_last_for, device_name, synchronize

__all__ = [
    "ELEMENTWISE_MACS",
    "MMSEG_SETTINGS",
    "Complexity",
    "InferenceSettings",
    "SpeedResult",
    "count_complexity",
    "count_params",
    "fast_settings",
    "measure_fps",
    "measure_fps_fast",
]

#: MMSeg's ``benchmark.py``: ``total_iters = 200`` images, of which ``num_warmup = 5`` untimed.
MMSEG_WARMUP = 5
MMSEG_TIMED_IMAGES = 200 - MMSEG_WARMUP

_PRECISION_NAMES: dict[torch.dtype | None, str] = {
    None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
}  # fmt: skip


@dataclass(frozen=True)
class InferenceSettings:
    """How a model is run while it is timed.

    Attributes:
        amp_dtype: autocast dtype, ``None`` for full precision (fp32).
        channels_last: model and input in channels-last memory format (else NCHW).
        cudnn_benchmark: ``torch.backends.cudnn.benchmark`` during the timing (restored after).
    """

    amp_dtype: torch.dtype | None
    channels_last: bool
    cudnn_benchmark: bool

    @property
    def precision(self) -> str:
        """``"fp32"``, or the autocast dtype (``"fp16"``, ``"bf16"``)."""
        return _PRECISION_NAMES.get(self.amp_dtype, str(self.amp_dtype))

    def to_dict(self) -> dict[str, Any]:
        """The record's ``fps_fast_settings``."""
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "cudnn_benchmark": self.cudnn_benchmark,
        }


#: MMSeg's ``benchmark.py``: fp32, NCHW, ``cudnn.benchmark = False``.
MMSEG_SETTINGS = InferenceSettings(amp_dtype=None, channels_last=False, cudnn_benchmark=False)


def fast_settings(
    device: torch.device | str, channels_last: bool | None = None
) -> InferenceSettings:
    """This package's inference settings on ``device`` (the runtime policy, as ``evaluate``
    runs): autocast on CUDA, channels-last on the CPU and under CUDA autocast unless
    ``channels_last`` says otherwise, cudnn's autotuner left off as in evaluation."""
    device = torch.device(device)
    dtype = amp_dtype(device, None)
    if channels_last is None:
        channels_last = channels_last_for(device, dtype)
    return InferenceSettings(amp_dtype=dtype, channels_last=channels_last, cudnn_benchmark=False)


@dataclass(frozen=True)
class SpeedResult:
    """Inference speed of one model at one resolution under one set of settings."""

    fps: float  # timed images / their total time (MMSeg's definition)
    fps_spread: float  # interquartile range of the per-image fps
    fps_median: float  # median of the per-image fps
    n_images: int  # timed images
    warmup: int  # untimed passes before them
    size: int
    device: str
    settings: InferenceSettings

    @property
    def amp(self) -> bool:
        """Whether the timing ran under autocast."""
        return self.settings.amp_dtype is not None


def _stored_channels_last(model: nn.Module) -> bool:
    """Whether the spatial 4-D weights of ``model`` are stored channels-last."""
    weights = [p for p in model.parameters() if p.ndim == 4 and p.shape[-2:].numel() > 1]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def _split_normalization(
    model: nn.Module,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(what runs before the clock starts, what runs after): a registry model's normalisation,
    then its forward pass on normalised images; any other module gets float 0..255 images."""
    normalize = getattr(model, "normalize", None)
    forward_normalized = getattr(model, "forward_normalized", None)
    if callable(normalize) and callable(forward_normalized):
        return normalize, forward_normalized
    return (lambda images: images.float()), model


def measure_fps(
    model: nn.Module,
    *,
    size: int = 1024,
    n_images: int = MMSEG_TIMED_IMAGES,
    warmup: int = MMSEG_WARMUP,
    device: torch.device | str | None = None,
    settings: InferenceSettings = MMSEG_SETTINGS,
    seed: int = 0,
) -> SpeedResult:
    """Inference fps of ``model`` on batch-1 ``size`` x ``size`` images, by MMSeg's definition
    (module docstring) unless other ``settings`` are given.

    The model is run in eval mode, converted to the settings' memory format for the call and
    given back as it came (mode and memory format). The input is one seeded random uint8 image
    (the content does not change the time of a segmentation network's forward pass).

    Raises:
        ValueError: ``n_images`` below 1 or ``warmup`` below 0.
    """
    if n_images < 1:
        raise ValueError(f"n_images={n_images}: time at least one image")
    if warmup < 0:
        raise ValueError(f"warmup={warmup}: use 0 or more untimed passes")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training, was_channels_last = model.training, _stored_channels_last(model)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model = model.to(device).eval().to(memory_format=memory_format)
    normalize, forward = _split_normalization(model)
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=generator)
    image = image.to(device)
    times: list[float] = []
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    try:
        with torch.no_grad():
            for i in range(warmup + n_images):
                # Outside the clock, as MMSeg's data_preprocessor: normalisation and layout.
                x = normalize(image).contiguous(memory_format=memory_format)
                synchronize(device)
                start = time.perf_counter()
                with autocast(device, settings.amp_dtype):
                    logits = forward(x)  # the forward pass and the resize to the input
                labels_from_logits(logits)
                synchronize(device)
                elapsed = time.perf_counter() - start
                if i >= warmup:
                    times.append(elapsed)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        model.train(was_training)
        if was_channels_last != settings.channels_last:
            model.to(memory_format=torch.channels_last if was_channels_last else torch.contiguous_format)
    per_image = sorted(1.0 / t for t in times)
    quartiles = statistics.quantiles(per_image, n=4) if len(per_image) > 1 else [per_image[0]] * 3
    return SpeedResult(
        fps=len(times) / math.fsum(times),
        fps_spread=quartiles[2] - quartiles[0],
        fps_median=statistics.median(per_image),
        n_images=n_images,
        warmup=warmup,
        size=size,
        device=device_name(device),
        settings=settings,
    )


def measure_fps_fast(
    model: nn.Module,
    *,
    device: torch.device | str | None = None,
    channels_last: bool | None = None,
    **options: Any,
) -> SpeedResult:
    """:func:`measure_fps` under :func:`fast_settings` (this package's inference settings);
    ``options`` as :func:`measure_fps` takes them (``size``, ``n_images``, ``warmup``)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    return measure_fps(model, device=device, settings=fast_settings(device, channels_last), **options)


def count_params(model: nn.Module) -> float:
    """Parameters in millions: every parameter, trainable or frozen (buffers such as
    BatchNorm's running statistics are not parameters and not counted)."""
    return sum(p.numel() for p in model.parameters()) / 1e6


# -- multiply-adds ---------------------------------------------------------------------------------

aten = torch.ops.aten


def _numel(shape: Any) -> int:
    return math.prod(shape)


def _norm_macs(affine_index: int) -> Callable[..., int]:
    """mmengine's count for a normalisation layer: 5 per element with an affine transform,
    4 without (an estimate, theirs)."""

    def count(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return _numel(args[0]) * (5 if args[affine_index] is not None else 4)

    return count


def _batch_norm_macs(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """mmengine's count for ``batch_norm``: in eval mode 2 per element with an affine
    transform, 1 without; in training mode that of any normalisation layer."""
    # aten.batch_norm(input, weight, bias, running_mean, running_var, training, ...)
    if args[5]:
        return _norm_macs(1)(*args)
    return _numel(args[0]) * (2 if args[1] is not None else 1)


def _per_output(scale: int) -> Callable[..., int]:
    def count(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return scale * _numel(out_shape)

    return count


def _per_input(scale: int) -> Callable[..., int]:
    def count(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return scale * _numel(args[0])

    return count


#: mmengine's per-element terms (``mmengine/analysis/complexity_analysis.py``), counted on the
#: composite ops as its trace sees them (the arguments are shapes).
ELEMENTWISE_MACS: dict[Any, Callable[..., int]] = {
    aten.batch_norm: _batch_norm_macs,
    aten.group_norm: _norm_macs(2),  # (input, num_groups, weight, ...)
    aten.layer_norm: _norm_macs(2),  # (input, normalized_shape, weight, ...)
    aten.instance_norm: _norm_macs(1),  # (input, weight, ...)
    aten.upsample_nearest2d: _per_output(1),
    aten.upsample_bilinear2d: _per_output(4),
    aten.adaptive_avg_pool2d: _per_input(1),
    aten.grid_sampler: _per_output(4),  # mmengine assumes bilinear
}


def _counter_mapping() -> dict[Any, Callable[..., int]]:
    """:data:`ELEMENTWISE_MACS` keyed for :class:`FlopCounterMode`: by packet (what it counts
    under) and by each overload (which stops it decomposing the op into the ones it calls)."""
    mapping: dict[Any, Callable[..., int]] = {}
    for packet, count in ELEMENTWISE_MACS.items():
        mapping[packet] = count
        for overload in packet.overloads():
            mapping[getattr(packet, overload)] = count
    return mapping


@dataclass(frozen=True)
class Complexity:
    """Cost of one forward pass at 1x3x``size``x``size``.

    Attributes:
        gmacs: billions of multiply-adds in mmengine's convention (MMSeg's ``get_flops``).
        gflops: ``torch.utils.flop_counter``'s billions of FLOPs (2 per multiply-add of
            convolutions, linear layers, matrix products and attention; nothing else).
    """

    gmacs: float
    gflops: float
    size: int


def count_complexity(
    model: nn.Module, size: int = 1024, device: torch.device | str | None = None
) -> Complexity:
    """Multiply-adds (MMSeg's convention) and FLOPs of one forward pass of ``model`` on a
    1x3x``size``x``size`` uint8 image (module docstring), counted in inference mode."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device)
    was_training = model.training
    model = model.eval()
    mapping = _counter_mapping()
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    try:
        # Inference mode: composite ops (batch_norm, upsample, ...) reach the counter whole.
        with torch.inference_mode(), counter:
            model(image)
    finally:
        model.train(was_training)
    macs = flops = 0.0
    for op, count in counter.get_flop_counts().get("Global", {}).items():
        if op in ELEMENTWISE_MACS:
            macs += count
        else:
            flops += count
    return Complexity(gmacs=(macs + flops / 2) / 1e9, gflops=flops / 1e9, size=size)
