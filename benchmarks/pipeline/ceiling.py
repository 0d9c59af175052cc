"""Sections 1-2: the model's forward pass alone (the ceiling) and our path from PNG files to
the finished confusion matrix, on the same model, tiles and settings."""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from loveda_utils.data.datamodule import LoveDADataModule
from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.evaluation.inference import labels_from_logits
from loveda_utils.evaluation.loop import evaluate
from loveda_utils.evaluation.metrics import PerSceneConfusion
from loveda_utils.runtime import synchronize

from .report import Ratio, Report, Row, progress, target_for, withdrawal
from .settings import Settings, loaded_batches, random_model
from .tiles import Tiles, TileStore
from .timing import interleave, paired_ratio


def time_ceiling(model: nn.Module, batches: list[torch.Tensor], settings: Settings) -> float:
    """Seconds of ``model(x)`` over the in-memory batches: the forward pass and nothing else."""
    with torch.inference_mode(), settings.autocast():
        synchronize(settings.device)
        start = time.perf_counter()
        for x in batches:
            model(x)
        synchronize(settings.device)
    return time.perf_counter() - start


def run_ours(
    model: nn.Module,
    tiles: Tiles,
    settings: Settings,
    *,
    workers: int | None = None,
    channels_last: bool | None = None,
    eval_transform: Callable | None = None,
    read_ahead: int | None = None,
) -> tuple[float, Any]:
    """Seconds from the PNG files to the finished confusion matrix, and the result."""
    start = time.perf_counter()
    datamodule = LoveDADataModule(
        tiles.root,
        eval_split="val",
        eval_scenes=list(tiles.scenes),
        eval_batch_size=settings.batch_size,
        num_workers=settings.workers if workers is None else workers,
        eval_transform=eval_transform,
        read_ahead=read_ahead,
    )
    result = evaluate(
        model,
        datamodule.val_dataloader(),
        device=settings.device,
        # The ceiling's precision, asked for: evaluate() itself defaults to fp32 on every device.
        amp=settings.amp_dtype if settings.amp_dtype is not None else False,
        channels_last=settings.channels_last if channels_last is None else channels_last,
    )
    seconds = time.perf_counter() - start  # evaluate() synchronised the device at its end
    del datamodule  # its persistent workers exit here, outside the next timing
    gc.collect()
    return seconds, result


def ours_seconds(model: nn.Module, tiles: Tiles, settings: Settings, results: list) -> float:
    """:func:`run_ours` for :func:`interleave`: the seconds; the result goes to ``results``."""
    seconds, result = run_ours(model, tiles, settings)
    results.append(result)
    return seconds


def tile_count(args: argparse.Namespace, seconds_per_tile: float) -> int:
    """``--tiles``, else enough tiles for a pass of about ``--pass-seconds`` (1..32)."""
    if args.tiles:
        return args.tiles
    return max(1, min(32, round(args.pass_seconds / max(seconds_per_tile, 1e-3))))


def decode_and_count_ms(
    model: nn.Module, tiles: Tiles, batches: list[torch.Tensor], settings: Settings
) -> tuple[float, float]:
    """What our path does per tile besides the forward pass, timed once over ``tiles``, in ms
    per tile: (decode, labels + count).

    Decode: the dataset's samples as the loader gets them (image and mask PNGs decoded, the
    mask mapped to labels), one after another on one thread. Labels + count: labels from the
    logits and one confusion update per batch, as :func:`evaluate` does, on the logits of the
    first batch (one untimed forward pass: their values do not change the cost) and each
    batch's real masks. Where the forward pass already uses every core, neither can overlap
    it, so this is the least our path can add to the ceiling.
    """
    dataset = LoveDASegmentation(tiles.root, "val", tiles.scenes)
    start = time.perf_counter()
    samples = [dataset[i] for i in range(len(dataset))]
    decode = (time.perf_counter() - start) / len(samples)
    step = settings.batch_size
    groups = [samples[i : i + step] for i in range(0, len(samples), step)]
    masks = [torch.stack([s["mask"] for s in g]).to(settings.device) for g in groups]
    scenes = [[s["scene"] for s in g] for g in groups]
    confusion = PerSceneConfusion(device=settings.device, validate=False)  # as evaluate()
    with torch.inference_mode(), settings.autocast():
        logits = model(batches[0])
        synchronize(settings.device)
        start = time.perf_counter()
        for mask, scene in zip(masks, scenes, strict=True):
            confusion.update(labels_from_logits(logits[: mask.shape[0]]), mask, scene)
        synchronize(settings.device)
        count = (time.perf_counter() - start) / len(samples)
    return 1000 * decode, 1000 * count


def measure_ceiling_ours(
    report: Report, store: TileStore, args: argparse.Namespace, settings: Settings, which: set[str]
) -> None:
    """Sections 1-2 for every ``--model`` x ``--size``."""
    for name in args.model:
        model = random_model(name, settings)
        for size in args.size:
            probe = store.get(size, 1)
            first = loaded_batches(probe, settings)[:1]
            time_ceiling(model, first, settings)  # warm-up (oneDNN primitives, allocator)
            per_tile = time_ceiling(model, first, settings) / first[0].shape[0]
            tiles = store.get(size, tile_count(args, per_tile))
            batches = loaded_batches(tiles, settings)
            progress(f"{name} at {size} px: {tiles.n} tiles from {tiles.source}")
            paths: dict[str, Callable[[], float]] = {}
            if "ceiling" in which:
                paths["ceiling: forward only"] = partial(time_ceiling, model, batches, settings)
            results: list[Any] = []
            if "ours" in which:
                paths["ours: PNG -> confusion matrix"] = partial(
                    ours_seconds, model, tiles, settings, results
                )
            times = interleave(paths, settings.rounds)
            note = f"{tiles.source}; batch {settings.batch_size}"
            for path, seconds in times.items():
                extra = (
                    f"; {settings.workers} workers; mIoU {results[0].miou:.4f}"
                    if "ours" in path
                    else ""
                )
                report.add(Row("eval", name, size, path, seconds, tiles.n, "tile", note + extra))
            if len(times) == 2:
                ceiling_t, ours_t = times.values()
                value, detail = paired_ratio(ceiling_t, ours_t)
                # What our path adds to the forward pass, per tile: unlike the ratio, this does
                # not move with how fast the host runs the model at the moment.
                added = statistics.median(
                    1000 * (o - c) / tiles.n for c, o in zip(ceiling_t, ours_t, strict=True)
                )
                decode_ms, count_ms = decode_and_count_ms(model, tiles, batches, settings)
                target = target_for(name)
                report.ratios.append(
                    Ratio(
                        "ours/ceiling",
                        f"{name} {size}px",
                        value,
                        target,
                        f"{detail}; {tiles.n} tiles per run; ours adds {added:.1f} ms/tile "
                        f"(median of paired rounds) to a {1000 * min(ceiling_t) / tiles.n:.1f} ms "
                        f"forward, beside what it cannot avoid (one pass over the same tiles): "
                        f"decode {decode_ms:.1f} ms/tile (image + mask, one thread), labels + "
                        f"count {count_ms:.1f} ms/tile",
                        withdrawn=withdrawal(target, size, settings),
                    )
                )
            if args.compile:
                measure_compiled(report, name, model, tiles, batches, settings)
        gc.collect()


def measure_compiled(
    report: Report, name: str, model: nn.Module, tiles: Tiles, batches: list, settings: Settings
) -> None:
    """The optional ``torch.compile`` path, reported on rows (and a ratio line) of its own."""
    progress(f"{name} at {tiles.size} px: torch.compile (compilation is not timed) ...")
    try:
        compiled = torch.compile(model)
        start = time.perf_counter()
        time_ceiling(compiled, batches[:1], settings)
        # evaluate() calls the model in its own context; guards may differ from the ceiling's
        # loop and recompile once: one untimed run of ours takes that too.
        run_ours(compiled, tiles, settings)
        compile_seconds = time.perf_counter() - start
    except Exception as exc:  # inductor needs a C++ compiler on the CPU; report, do not die
        report.facts.append(f"torch.compile failed for {name}: {type(exc).__name__}: {exc}")
        return
    results: list[Any] = []
    times = interleave(
        {
            "ceiling + torch.compile": partial(time_ceiling, compiled, batches, settings),
            "ours + torch.compile": partial(ours_seconds, compiled, tiles, settings, results),
        },
        settings.rounds,
    )
    note = f"compiled + warm-up run {compile_seconds:.0f} s (not timed); mIoU {results[0].miou:.4f}"
    for path, seconds in times.items():
        report.add(Row("compile", name, tiles.size, path, seconds, tiles.n, "tile", note))
    value, detail = paired_ratio(*times.values())
    report.ratios.append(
        Ratio(
            "compiled ours/ceiling",
            f"{name} {tiles.size}px",
            value,
            target_for(name),
            f"torch.compile path, reported separately; {detail}",
            withdrawn=withdrawal(target_for(name), tiles.size, settings),
        )
    )
