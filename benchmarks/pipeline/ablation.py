"""Section 7: what each optimisation of the evaluation path is worth, one switched off at a
time, plus the per-tile cost of the decoders and of the label and confusion-matrix kernels."""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.data.pngio import read_png, read_png_pillow
from loveda_utils.data.transforms import ToPlainTensors, ToTVTensors
from loveda_utils.evaluation.inference import labels_from_logits
from loveda_utils.evaluation.metrics import PerSceneConfusion

from .ceiling import run_ours, tile_count, time_ceiling
from .report import Report, Row, progress
from .settings import Settings, loaded_batches, random_model
from .tiles import Tiles, TileStore
from .timing import interleave


def _float_in_workers() -> Callable:
    """An eval pipeline that turns images into float32 (0..255) in the workers: 4x the bytes."""
    return v2.Compose(
        [
            ToTVTensors(),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=False),
            ToPlainTensors(),
        ]
    )


def _kernel_ms(fn: Callable[[], Any], reps: int = 20) -> float:
    """Best of ``reps`` timed calls of ``fn`` after one untimed call, in ms."""
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def measure_ablation(
    report: Report, store: TileStore, args: argparse.Namespace, settings: Settings
) -> None:
    """Section 7: ours with one optimisation off at a time; the kernels old against new."""
    name, size = args.model[0], min(args.size)
    model = random_model(name, settings)
    probe = loaded_batches(store.get(size, 1), settings)[:1]
    time_ceiling(model, probe, settings)
    tiles = store.get(size, tile_count(args, time_ceiling(model, probe, settings)))
    progress(f"ablation, {name} at {size} px: {tiles.n} tiles")
    variants: dict[str, Callable[[], float]] = {
        f"final ({settings.workers} workers, channels_last={settings.channels_last}, uint8)": lambda: (
            run_ours(model, tiles, settings)[0]
        ),
    }
    for w in sorted({0, 1, 2} - {settings.workers}):
        if w <= (os.cpu_count() or 1):
            variants[f"{w} workers"] = lambda w=w: run_ours(model, tiles, settings, workers=w)[0]
    if settings.workers == 0:
        variants["no read-ahead (one tile at a time)"] = lambda: run_ours(
            model, tiles, settings, read_ahead=1
        )[0]
    variants["channels_last off (NCHW model)"] = lambda: _run_nchw(model, tiles, settings)
    variants["float32 images from workers"] = lambda: run_ours(
        model, tiles, settings, eval_transform=_float_in_workers()
    )[0]
    times = interleave(variants, settings.rounds)
    final = next(iter(times.values()))
    for path, seconds in times.items():
        # Paired with the final path's run of the same round (the host drifts between rounds).
        delta = statistics.median(1000 * (v - f) / tiles.n for v, f in zip(seconds, final))
        ratio = statistics.median(f / v for v, f in zip(seconds, final))
        note = (
            ""
            if path.startswith("final")
            else f"{delta:+.2f} ms/tile vs final (speed x{ratio:.2f}; medians of paired rounds)"
        )
        report.add(Row("ablation", name, size, path, seconds, tiles.n, "tile", note))

    # The per-tile kernels, on this model's real logits and a real mask.
    dataset = LoveDASegmentation(tiles.root, "val", tiles.scenes)
    files = dataset.files[0]
    for path, fn in {
        "decode image + mask: Pillow, np.array": lambda: [
            read_png_pillow(files["image"], "image"),
            read_png_pillow(files["mask"], "mask"),
        ],
        "decode image + mask: read_png (imagecodecs)": lambda: [
            read_png(files["image"], "image"),
            read_png(files["mask"], "mask"),
        ],
    }.items():
        ms = _kernel_ms(fn)
        note = "best of repeats, one core"
        report.add(Row("kernel", name, size, path, [ms / 1000], 1, "tile", note))
    batch = probe[0]
    mask = dataset[0]["mask"]
    mask = mask.unsqueeze(0).expand(batch.shape[0], -1, -1).to(settings.device)
    scenes = [tiles.scenes[0]] * batch.shape[0]
    with torch.inference_mode(), settings.autocast():
        logits = model(batch)
        nchw = logits.contiguous()
        labels = logits.argmax(1)
        confusion = PerSceneConfusion(device=settings.device, validate=False)  # as evaluate()
        kernels = {
            f"labels: argmax, {'channels-last' if settings.channels_last else 'NCHW'} logits": (
                lambda: logits.argmax(1)
            ),
            "labels: argmax, NCHW logits": lambda: nchw.argmax(1),
            "labels: labels_from_logits (amax+compare), NCHW": lambda: labels_from_logits(nchw),
            "confusion: one bincount (PerSceneConfusion.update)": lambda: confusion.update(
                labels, mask, scenes
            ),
            "forward under torch.inference_mode": lambda: model(batch),
        }
        for path, fn in kernels.items():
            ms = _kernel_ms(fn, reps=5 if "forward" in path else 20)
            note = "best of repeats, per batch"
            report.add(Row("kernel", name, size, path, [ms / 1000], batch.shape[0], "tile", note))
    with torch.no_grad(), settings.autocast():
        ms = _kernel_ms(lambda: model(batch), reps=5)
    report.add(
        Row(
            "kernel",
            name,
            size,
            "forward under torch.no_grad",
            [ms / 1000],
            batch.shape[0],
            "tile",
            "best of repeats, per batch",
        )
    )
    if settings.device.type != "cuda":
        report.facts.append(
            "pinned memory and non-blocking copies: not measurable on the CPU (no host-to-device "
            "copy); on CUDA the DataModule pins batches and evaluate() copies non-blocking"
        )
    gc.collect()


def _run_nchw(model: nn.Module, tiles: Tiles, settings: Settings) -> float:
    """Ours with the model and the images in NCHW (converted outside the timing, restored)."""
    model.to(memory_format=torch.contiguous_format)
    try:
        return run_ours(model, tiles, settings, channels_last=False)[0]
    finally:
        if settings.channels_last:
            model.to(memory_format=torch.channels_last)
