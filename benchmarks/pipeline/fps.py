"""Section 5: :func:`~loveda_utils.benchmark.measure.measure_fps` against an independent timing
of the same model and input with ``torch.utils.benchmark``.

The figure checked is the one the table publishes: ``SpeedResult.fps``, MMSeg's timed images over
their total time (a mean). ``torch.utils.benchmark`` is read the same way, its ``mean`` (the
total time of its runs over their number), not its median of blocks."""

from __future__ import annotations

import argparse
import gc
import statistics

import torch

from loveda_utils.benchmark.measure import InferenceSettings, measure_fps

from .report import Ratio, Report, Row, progress
from .settings import Settings, random_model
from .timing import interleave, paired_ratio


def measure_fps_check(report: Report, args: argparse.Namespace, settings: Settings) -> None:
    """Section 5: ``measure_fps`` (the table's figure, under the run's settings) against
    ``torch.utils.benchmark.Timer``, both as mean seconds per image."""
    from torch.utils import benchmark

    name, size = args.fps_model, args.fps_size
    model = random_model(name, settings)
    progress(
        f"fps, {name} at {size} px: measure_fps ({args.fps_images} images) vs torch.utils.benchmark"
    )
    image = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device=settings.device)
    if settings.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    budget: list[float] = []
    timing = InferenceSettings(
        settings.amp_dtype, settings.channels_last, torch.backends.cudnn.benchmark
    )

    def ours() -> float:
        speed = measure_fps(
            model,
            size=size,
            n_images=args.fps_images,
            warmup=5,
            device=settings.device,
            settings=timing,
        )
        budget.append(args.fps_images / speed.fps)
        return 1.0 / speed.fps  # mean seconds per image: the table's figure

    def independent() -> float:
        timer = benchmark.Timer(
            stmt="model(image).argmax(1)",
            globals={"model": model, "image": image},
            num_threads=torch.get_num_threads(),  # the Timer's default is 1 thread
            label="bench-pipeline",
        )
        with torch.inference_mode(), settings.autocast():
            measurement = timer.blocked_autorange(min_run_time=max(budget[-1] if budget else 2, 1))
        return measurement.mean

    times = interleave(
        {"measure_fps (ours, mean)": ours, "torch.utils.benchmark (mean)": independent},
        settings.rounds,
    )
    note = f"batch 1, uint8 input, forward + argmax, {torch.get_num_threads()} threads"
    for path, seconds in times.items():
        report.add(Row("fps", name, size, path, seconds, 1, "image", note))
    ours_t, ref_t = times.values()
    value, detail = paired_ratio(ref_t, ours_t)
    report.ratios.append(
        Ratio(
            "fps ours/independent",
            f"{name} {size}px",
            value,
            "fps/independent",
            f"{1 / statistics.median(ours_t):.3f} vs {1 / statistics.median(ref_t):.3f} fps "
            f"(each a mean over its images; median over rounds); {detail}",
        )
    )
    gc.collect()
