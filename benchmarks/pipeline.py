"""``bench-pipeline``: is evaluation as fast as the model allows, and is its fps figure true?

Measured side by side in one run, on the same model, tiles and resolution:

1. **ceiling**: the model's forward pass alone, on uint8 batches already on the device (same
   batch size, memory format, autocast and threads as the evaluation below).
2. **ours**: PNG files on disk to the finished confusion matrix: :class:`LoveDADataModule`'s
   ``val_dataloader`` (PNG decode: in bursts on every core between forward passes without
   workers (:class:`~loveda_utils.data.datamodule.ReadAhead`), else in its workers; uint8) and
   :func:`~loveda_utils.evaluation.inference.evaluate` (transfer, normalisation on the device, forward,
   argmax, one ``bincount`` per batch).
3. **torchgeo**: torchgeo's own path on the same tiles and the same smp UNet weights: its
   ``LoveDADataModule`` and ``SemanticSegmentation`` task through Lightning's
   ``Trainer.validate``. Both paths are scored the same MMSeg way and must agree exactly.
4. **train**: training steps of :class:`~loveda_utils.training.task.SegmentationTask` in our Trainer
   (:func:`~loveda_utils.training.task.build_trainer`) against a plain PyTorch loop doing the same steps.
5. **fps**: :func:`~loveda_utils.benchmark.measure.measure_fps` against an independent timing of the same
   model and input with ``torch.utils.benchmark``.
6. **memory**: peak memory of whole evaluations of 8, 32 and 128 tiles, each in a fresh process.
7. **ablation**: what each optimisation of the evaluation path is worth, one switched off at a
   time, plus the per-tile cost of the decoders and of the label and confusion-matrix kernels,
   old and new.

The paths compared are interleaved (the order alternates every round) and repeated
(``--rounds``). A ratio is the median over rounds of the two paths' times within a round
(adjacent runs see the same machine, so a drifting shared host cancels out); the ratio of the
best runs is printed beside it, and the table shows best and median times and the share of the
CPUs that other processes used. The table comes first, the ratios against the targets last.
The numbers of a run are recorded in ``benchmarks/RESULTS.md``.

Run ``python -m benchmarks.pipeline --help`` (or ``python -m loveda_utils bench-pipeline``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loveda_utils.benchmark.measure import measure_fps
from loveda_utils.data.classes import NUM_CLASSES, SCENES, raw_to_train
from loveda_utils.errors import ConfigError, LoveDAError
from loveda_utils.paths import PROJECT_ROOT
from loveda_utils.runtime import device_name, resolve_device, synchronize

__all__ = ["MEASUREMENTS", "TARGETS", "add_arguments", "run"]

#: Everything ``--measure`` can select (the default is all of them).
MEASUREMENTS: tuple[str, ...] = (
    "ceiling",
    "ours",
    "torchgeo",
    "train",
    "fps",
    "memory",
    "ablation",
)
#: The models and tile sizes the targets name.
DEFAULT_MODELS: tuple[str, ...] = ("lraspp_mobilenet_v3_large", "deeplabv3_resnet50")
DEFAULT_SIZES: tuple[int, ...] = (512, 1024)
#: A model both our registry and torchgeo's ``SemanticSegmentation`` build identically.
DEFAULT_TORCHGEO_MODEL = "unet_resnet18"
#: The real LoveDA sample beside the repository (DESIGN.md), used for 1024 px tiles.
DEFAULT_SAMPLE_ROOT = Path(
    os.environ.get("LOVEDA_SAMPLE", PROJECT_ROOT.parent / "shared" / "loveda_sample")
)

#: The targets of issue 5 on the 2-core development CPU: (lowest, highest) acceptable ratio.
TARGETS: dict[str, tuple[float, float]] = {
    "ours/ceiling light": (0.90, float("inf")),
    "ours/ceiling heavy": (0.97, float("inf")),
    "ours/torchgeo": (1.20, float("inf")),
    "lightning/plain": (0.95, float("inf")),
    "fps/independent": (0.90, 1.10),
    "memory 128/8 tiles": (0.0, 1.05),
}
#: Which target a model's ours/ceiling ratio is held to.
LIGHT_MODELS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "segformer_mit_b0")


# --------------------------------------------------------------------------------------------
# Results: rows of the table and ratio lines
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a path timed over ``rounds`` repetitions of ``units`` items."""

    section: str
    model: str
    size: int | None
    path: str
    seconds: list[float]
    units: int
    unit: str = "tile"
    note: str = ""
    background: float | None = None  # others' CPU share during the best run

    def __post_init__(self) -> None:
        loads = getattr(self.seconds, "background", None)
        if loads and self.background is None:
            self.background = loads[self.seconds.index(min(self.seconds))]
        self.seconds = list(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def per_unit_ms(self) -> float:
        return 1000 * self.best / self.units

    def rate(self) -> float:
        return self.units / self.best


@dataclass
class Ratio:
    """A ratio held to a target; ``value`` is ``None`` when it could not be measured."""

    name: str
    subject: str
    value: float | None
    target: str
    detail: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        low, high = TARGETS[self.target]
        return low <= self.value <= high

    def format(self) -> str:
        low, high = TARGETS[self.target]
        if high == float("inf"):
            want = f">= {low:.2f}"
        elif low == 0:
            want = f"<= {high:.2f}"
        else:
            want = f"{low:.2f}..{high:.2f}"
        verdict = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[self.met]
        value = "   n/a" if self.value is None else f"{self.value:6.3f}"
        detail = f"  ({self.detail})" if self.detail else ""
        return (
            f"ratio {self.name:<22} {self.subject:<34} {value}  target {want:<10} {verdict}{detail}"
        )


@dataclass
class Report:
    """Everything one run measured."""

    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        progress(
            f"  {row.section:<9} {row.model:<27} {row.size or '':>5} {row.path:<34} "
            f"best {row.best:8.3f} s  median {row.median:8.3f} s  ({row.units} {row.unit}s)"
        )
        return row


def progress(message: str) -> None:
    """Progress goes to stderr: stdout holds only the table and the ratios."""
    print(message, file=sys.stderr, flush=True)


def format_table(rows: Sequence[Row]) -> str:
    """The table: one line per measured path."""
    head = (
        f"{'section':<9} {'model':<27} {'px':>5} {'path':<40} {'n':>4} {'unit':<5} "
        f"{'best s':>8} {'median s':>9} {'ms/unit':>9} {'unit/s':>8} {'bg%':>4}  note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        bg = "-" if r.background is None else f"{100 * r.background:.0f}"
        lines.append(
            f"{r.section:<9} {r.model:<27} {r.size or '':>5} {r.path:<40} {r.units:>4} "
            f"{r.unit:<5} {r.best:8.3f} {r.median:9.3f} {r.per_unit_ms():9.2f} "
            f"{r.rate():8.2f} {bg:>4}  {r.note}"
        )
    legend = (
        "best s / median s: over the rounds; ms/unit and unit/s from the best round; bg%: share "
        "of all CPUs other processes used during the best round (from /proc/stat)"
    )
    return "\n".join([*lines, "", legend])


class Timing(list):
    """Seconds per run (a list of floats) with the background load of each run beside it."""

    background: list[float | None]


def _cpu_counters() -> tuple[float, float] | None:
    """(busy CPU-seconds of the whole machine, CPU-seconds of this process and its reaped
    children), or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / ticks
    own = sum(
        getattr(resource.getrusage(who), attr)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for attr in ("ru_utime", "ru_stime")
    )
    return busy, own


def timed(fn: Callable[[], float]) -> tuple[float, float | None]:
    """``fn()`` (seconds) and the share of all CPUs that other processes used meanwhile."""
    before, start = _cpu_counters(), time.perf_counter()
    seconds = fn()
    after, wall = _cpu_counters(), time.perf_counter() - start
    if before is None or after is None or wall <= 0:
        return seconds, None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return seconds, max(0.0, others) / (wall * (os.cpu_count() or 1))


def interleave(paths: dict[str, Callable[[], float]], rounds: int) -> dict[str, Timing]:
    """Run every path ``rounds`` times, alternating the order each round; seconds per run.

    On a shared machine a burst of load hits whichever path runs at that moment: alternating
    spreads it, and the best round of each path is the least disturbed one. The share of the
    CPUs other processes took during each run is kept beside it (``Timing.background``).
    """
    times: dict[str, Timing] = {}
    for name in paths:
        times[name] = Timing()
        times[name].background = []
    names = list(paths)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds, background = timed(paths[name])
            times[name].append(seconds)
            times[name].background.append(background)
    return times


def paired_ratio(reference: Sequence[float], ours: Sequence[float]) -> tuple[float, str]:
    """Speed of ours relative to ``reference``: the median over rounds of ``reference / ours``.

    The two runs of a round are adjacent in time, so a slow drift of the machine (a shared
    virtual machine drifts by +-20% over minutes here) cancels within each pair; the median
    then drops the rounds a burst hit. The ratio of the best runs is given beside it.
    """
    per_round = [r / o for r, o in zip(reference, ours, strict=True)]
    value = statistics.median(per_round)
    detail = (
        f"median of {len(per_round)} paired rounds "
        f"[{', '.join(f'{v:.3f}' for v in per_round)}]; best/best {min(reference) / min(ours):.3f}"
    )
    return value, detail


# --------------------------------------------------------------------------------------------
# Tiles: the same files for every path
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiles:
    """A LoveDA tree holding ``n`` tiles of ``size`` px under ``Val/<Scene>/`` (symlinks)."""

    root: Path
    n: int
    size: int
    scenes: tuple[str, ...]
    source: str


def _png_size(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as img:
        if img.width != img.height:
            raise ConfigError(f"{path}: tiles must be square, got {img.width}x{img.height}")
        return img.width


class TileStore:
    """Builds, once per (size, n), a tree of ``n`` tiles that every path reads.

    Sources: ``--data-root`` (its ``--split``/``--scenes``); else, at 1024 px, the real LoveDA
    sample (real PNG encodings, so real decode cost); else a generated mini-LoveDA in the work
    folder. Fewer source tiles than ``n`` are cycled (as symlinks: no extra disk). The tree
    always calls its split ``Val``, because torchgeo's datamodule validates on ``Val`` only.
    """

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self._sources: dict[int, tuple[list[tuple[Path, Path, str]], str]] = {}
        self._trees: dict[tuple[int, int], Tiles] = {}

    def sources(self, size: int) -> tuple[list[tuple[Path, Path, str]], str]:
        if size not in self._sources:
            self._sources[size] = self._find_sources(size)
        return self._sources[size]

    def _find_sources(self, size: int) -> tuple[list[tuple[Path, Path, str]], str]:
        from loveda_utils.data.dataset import LoveDASegmentation

        args = self.args
        if args.data_root:
            dataset = LoveDASegmentation(args.data_root, args.split, args.scenes)
            if not dataset.has_masks:
                raise ConfigError(
                    f"--split {args.split}: the evaluation is scored, so it needs masks; use "
                    "--split train or --split val"
                )
            pairs = [
                (Path(f["image"]), Path(f["mask"]), _scene_of(f["image"])) for f in dataset.files
            ]
            if not pairs:
                raise ConfigError(f"--data-root {args.data_root}: no {args.split} tiles found")
            found = _png_size(pairs[0][0])
            if found != size:
                raise ConfigError(
                    f"--size {size} but the tiles under --data-root are {found} px "
                    f"({pairs[0][0]}); pass --size {found}"
                )
            return pairs, f"{args.data_root} ({dataset.split_dir}/{'+'.join(dataset.scene_dirs)})"
        sample = Path(args.sample_root) if args.sample_root else None
        if size == 1024 and sample is not None and (sample / "Train" / "Rural").is_dir():
            dataset = LoveDASegmentation(sample, "train", "rural")
            pairs = [(Path(f["image"]), Path(f["mask"]), "Rural") for f in dataset.files]
            if pairs and _png_size(pairs[0][0]) == size:
                return pairs, f"real LoveDA sample ({len(pairs)} tiles, Train/Rural)"
        from loveda_utils.data.synthetic import generate_mini_loveda

        root = self.work / f"synthetic-{size}px"
        if not root.exists():
            progress(f"generating a synthetic mini-LoveDA at {size} px in {root} ...")
            generate_mini_loveda(root, tiles=4, size=size, seed=0)
        pairs = []
        for split in ("Train", "Val"):
            dataset = LoveDASegmentation(root, split, "both")
            pairs += [
                (Path(f["image"]), Path(f["mask"]), _scene_of(f["image"])) for f in dataset.files
            ]
        return pairs, f"synthetic mini-LoveDA ({len(pairs)} distinct tiles, seed 0)"

    def get(self, size: int, n: int) -> Tiles:
        """The tree of ``n`` tiles of ``size`` px (built on first use)."""
        if (size, n) in self._trees:
            return self._trees[(size, n)]
        pairs, source = self.sources(size)
        root = self.work / f"tiles-{size}px-{n}"
        if root.exists():  # left by an earlier run with the same --work-dir: rebuild it
            shutil.rmtree(root)
        scenes: list[str] = []
        for k in range(n):
            image, mask, scene = pairs[k % len(pairs)]
            if scene not in scenes:
                scenes.append(scene)
            for src, folder in ((image, "images_png"), (mask, "masks_png")):
                dst = root / "Val" / scene / folder / f"{k}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    dst.symlink_to(src.resolve())
                except OSError:  # filesystems without symlinks
                    shutil.copyfile(src, dst)
        if n > len(pairs):
            source += f", cycled to {n}"
        ordered = tuple(s for s in SCENES if s in scenes)
        tiles = Tiles(root, n, size, ordered, source)
        self._trees[(size, n)] = tiles
        return tiles


def _scene_of(image_path: str | Path) -> str:
    return Path(image_path).parent.parent.name


# --------------------------------------------------------------------------------------------
# Settings shared by every path
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What every timed path shares: device, batch, workers, rounds, memory format, AMP."""

    device: torch.device
    batch_size: int
    workers: int
    rounds: int
    channels_last: bool
    amp_dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager:
        from loveda_utils.runtime import autocast

        return autocast(self.device, self.amp_dtype)


def _settings(args: argparse.Namespace) -> Settings:
    # evaluate()'s own defaults, so the ceiling runs exactly like the evaluation.
    from loveda_utils.data.datamodule import default_num_workers
    from loveda_utils.runtime import amp_dtype as _amp_dtype
    from loveda_utils.runtime import channels_last_for

    device = resolve_device(args.device)
    amp_dtype = _amp_dtype(device, None)
    return Settings(
        device=device,
        batch_size=args.batch_size,
        workers=default_num_workers() if args.workers is None else args.workers,
        rounds=args.rounds,
        channels_last=channels_last_for(device, amp_dtype),
        amp_dtype=amp_dtype,
    )


def _model(name: str, settings: Settings, seed: int = 0) -> nn.Module:
    from loveda_utils.models.registry import build_model

    torch.manual_seed(seed)  # the same random weights in every run of the script
    model = build_model(name, pretrained="none").eval().to(settings.device)
    if settings.channels_last:  # converted once, outside any timed path
        model = model.to(memory_format=torch.channels_last)
    return model


def _loaded_batches(tiles: Tiles, settings: Settings) -> list[torch.Tensor]:
    """The tiles' images as uint8 batches on the device, as the evaluation feeds the model."""
    from loveda_utils.data.dataset import LoveDASegmentation

    dataset = LoveDASegmentation(tiles.root, "val", tiles.scenes)
    images = [dataset[i]["image"] for i in range(len(dataset))]
    batches = []
    for i in range(0, len(images), settings.batch_size):
        batch = torch.stack(images[i : i + settings.batch_size]).to(settings.device)
        if settings.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        batches.append(batch)
    return batches


# --------------------------------------------------------------------------------------------
# 1-2. ceiling and ours
# --------------------------------------------------------------------------------------------


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
    from loveda_utils.data.datamodule import LoveDADataModule
    from loveda_utils.evaluation.inference import evaluate

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
        channels_last=settings.channels_last if channels_last is None else channels_last,
    )
    seconds = time.perf_counter() - start  # evaluate() synchronised the device at its end
    del datamodule  # its persistent workers exit here, outside the next timing
    gc.collect()
    return seconds, result


def _ours_seconds(model: nn.Module, tiles: Tiles, settings: Settings, results: list) -> float:
    """:func:`run_ours` for :func:`interleave`: the seconds; the result goes to ``results``."""
    seconds, result = run_ours(model, tiles, settings)
    results.append(result)
    return seconds


def _tile_count(args: argparse.Namespace, seconds_per_tile: float) -> int:
    """``--tiles``, else enough tiles for a pass of about ``--pass-seconds`` (1..32)."""
    if args.tiles:
        return args.tiles
    return max(1, min(32, round(args.pass_seconds / max(seconds_per_tile, 1e-3))))


def _target_for(model: str) -> str:
    return "ours/ceiling light" if model in LIGHT_MODELS else "ours/ceiling heavy"


def measure_ceiling_ours(
    report: Report, store: TileStore, args: argparse.Namespace, settings: Settings, which: set[str]
) -> None:
    """Sections 1-2 for every ``--model`` x ``--size``."""
    for name in args.model:
        model = _model(name, settings)
        for size in args.size:
            probe = store.get(size, 1)
            first = _loaded_batches(probe, settings)[:1]
            time_ceiling(model, first, settings)  # warm-up (oneDNN primitives, allocator)
            per_tile = time_ceiling(model, first, settings) / first[0].shape[0]
            tiles = store.get(size, _tile_count(args, per_tile))
            batches = _loaded_batches(tiles, settings)
            progress(f"{name} at {size} px: {tiles.n} tiles from {tiles.source}")
            paths: dict[str, Callable[[], float]] = {}
            if "ceiling" in which:
                paths["ceiling: forward only"] = partial(time_ceiling, model, batches, settings)
            results: list[Any] = []
            if "ours" in which:
                paths["ours: PNG -> confusion matrix"] = partial(
                    _ours_seconds, model, tiles, settings, results
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
                report.ratios.append(
                    Ratio(
                        "ours/ceiling",
                        f"{name} {size}px",
                        value,
                        _target_for(name),
                        f"{detail}; {tiles.n} tiles per run; ours adds {added:.1f} ms/tile "
                        f"(median of paired rounds) to a {1000 * min(ceiling_t) / tiles.n:.1f} ms "
                        "forward",
                    )
                )
            if args.compile:
                _measure_compiled(report, name, model, tiles, batches, settings)
        gc.collect()


def _measure_compiled(
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
            "ours + torch.compile": partial(_ours_seconds, compiled, tiles, settings, results),
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
            _target_for(name),
            f"torch.compile path, reported separately; {detail}",
        )
    )


# --------------------------------------------------------------------------------------------
# 3. torchgeo's own path
# --------------------------------------------------------------------------------------------


def _quiet_lightning() -> contextlib.ExitStack:
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


def _accelerator(device: torch.device) -> tuple[str, int | list[int]]:
    if device.type == "cuda":
        return "gpu", [device.index or 0]
    if device.type == "mps":
        return "mps", 1
    return "cpu", 1


def _precision(settings: Settings) -> str:
    if settings.amp_dtype is None:
        return "32-true"
    return "bf16-mixed" if settings.amp_dtype == torch.bfloat16 else "16-mixed"


def torchgeo_task(ours: nn.Module) -> nn.Module:
    """torchgeo's ``SemanticSegmentation`` UNet holding exactly ``ours``'s weights.

    torchgeo's LoveDA masks keep the raw values (0 = no-data), so its task has 8 classes and
    ignores 0. Our 7 class channels go to its channels 1..7; channel 0 gets zero weights and a
    bias of -1e4, so it never wins the argmax and both models predict the same labels.
    """
    from torchgeo.tasks import SemanticSegmentation

    spec = ours.spec  # type: ignore[union-attr]
    task = SemanticSegmentation(
        model="unet",
        backbone=spec.encoder,
        weights=None,
        in_channels=3,
        num_classes=NUM_CLASSES + 1,
        ignore_index=0,
    )
    state = {k: v.detach().clone() for k, v in ours.net.state_dict().items()}  # type: ignore[union-attr]
    theirs = task.model.state_dict()
    for key in ("segmentation_head.0.weight", "segmentation_head.0.bias"):
        head = torch.zeros_like(theirs[key])
        head[1:] = state[key]
        if key.endswith("bias"):
            head[0] = -1e4
        state[key] = head
    task.model.load_state_dict(state)
    return task


def _check_torchgeo_model(name: str) -> None:
    from loveda_utils.models.registry import get_spec

    spec = get_spec(name)
    if spec.family != "smp" or spec.arch != "Unet" or spec.arch_kwargs:
        raise ConfigError(
            f"--torchgeo-model {name}: torchgeo's SemanticSegmentation builds the same network "
            "only for our plain smp UNets (unet_resnet18, unet_resnet50)"
        )


class _Scorer:
    """Collects torchgeo's predictions (a forward hook) and scores them with our metrics."""

    def __init__(self) -> None:
        import lightning as L

        from loveda_utils.evaluation.metrics import ConfusionMatrix

        self.confusion = ConfusionMatrix(NUM_CLASSES)
        self.logits: torch.Tensor | None = None
        scorer = self

        class Callback(L.Callback):
            def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
                labels = scorer.logits.argmax(dim=1) - 1  # their class 1..7 is our 0..6
                scorer.confusion.update(labels, raw_to_train(batch["mask"]))

        self.callback = Callback()

    def hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.logits = output.detach()


def _agreement(ours: torch.Tensor, theirs: Any) -> str:
    """How two confusion matrices of the same pixels compare (identical, or by how much not)."""
    theirs = theirs.matrix.cpu()
    if torch.equal(ours, theirs):
        return "identical confusion matrices"
    # A pixel predicted differently moves one count from one cell of its row to another
    # (swaps within a row cancel, hence "at least").
    moved = int((ours - theirs).abs().sum()) // 2
    return (
        f"confusion matrices differ: at least {moved} of {int(ours.sum())} pixels predicted "
        "differently; NCHW and channels-last convolutions round differently, flipping "
        "near-tied argmaxes"
    )


def run_torchgeo(
    task: nn.Module, tiles: Tiles, settings: Settings, scorer: _Scorer | None = None
) -> float:
    """Seconds of torchgeo's path: its datamodule and ``Trainer.validate``, built per run."""
    import lightning as L
    from torchgeo.datamodules import LoveDADataModule as TorchGeoLoveDA

    accelerator, devices = _accelerator(settings.device)
    handle = task.model.register_forward_hook(scorer.hook) if scorer else None
    try:
        with _quiet_lightning():
            start = time.perf_counter()
            datamodule = TorchGeoLoveDA(
                batch_size=settings.batch_size,
                num_workers=settings.workers,
                root=str(tiles.root),
                scene=[s.lower() for s in tiles.scenes],
            )
            trainer = L.Trainer(
                accelerator=accelerator,
                devices=devices,
                precision=_precision(settings),
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                inference_mode=True,
                callbacks=[scorer.callback] if scorer else [],
                default_root_dir=str(tiles.root.parent / "lightning"),
            )
            trainer.validate(task, datamodule=datamodule, verbose=False)
            synchronize(settings.device)
            seconds = time.perf_counter() - start
    finally:
        if handle is not None:
            handle.remove()
    del trainer, datamodule
    gc.collect()
    return seconds


def measure_torchgeo(
    report: Report, store: TileStore, args: argparse.Namespace, settings: Settings
) -> None:
    """Section 3: ours against torchgeo's path on the same smp UNet, tiles and workers."""
    name = args.torchgeo_model
    _check_torchgeo_model(name)
    for size in args.torchgeo_size:
        ours_model = _model(name, settings)
        # torchgeo's datamodule feeds x / 255 (its mean 0, std 255): ours does the same here,
        # so both networks see identical inputs and must predict identical labels.
        ours_model.set_normalization(torch.zeros(3), torch.full((3,), 255.0), "x/255 (as torchgeo)")
        task = torchgeo_task(ours_model).to(settings.device)
        probe = _loaded_batches(store.get(size, 1), settings)[:1]
        time_ceiling(ours_model, probe, settings)
        per_tile = time_ceiling(ours_model, probe, settings) / probe[0].shape[0]
        tiles = store.get(size, _tile_count(args, per_tile))
        progress(f"torchgeo vs ours, {name} at {size} px: {tiles.n} tiles from {tiles.source}")

        # Scored (untimed) runs: ours, torchgeo as shipped, torchgeo with a channels-last model.
        _, result = run_ours(ours_model, tiles, settings)
        variants: dict[str, nn.Module] = {"torchgeo (as shipped)": task}
        cl_task = copy.deepcopy(task).to(memory_format=torch.channels_last)
        variants["torchgeo + channels_last model"] = cl_task
        scores: dict[str, Any] = {}
        single: dict[str, float] = {}
        single_bg: dict[str, float | None] = {}
        for label, variant in variants.items():
            scorer = _Scorer()
            single[label], single_bg[label] = timed(
                partial(run_torchgeo, variant, tiles, settings, scorer)
            )
            scores[label] = scorer.confusion
        # "Each path at its best settings": the faster torchgeo variant goes into the rounds.
        best = min(single, key=single.get)  # type: ignore[arg-type]
        times = interleave(
            {
                "ours: PNG -> confusion matrix": partial(
                    _ours_seconds, ours_model, tiles, settings, []
                ),
                best: partial(run_torchgeo, variants[best], tiles, settings),
            },
            settings.rounds,
        )
        note = f"{tiles.source}; batch {settings.batch_size}; {settings.workers} workers"
        for path, seconds in times.items():
            miou = result.miou if path.startswith("ours") else scores[path].compute().miou
            report.add(
                Row(
                    "torchgeo",
                    name,
                    size,
                    path,
                    seconds,
                    tiles.n,
                    "tile",
                    f"{note}; mIoU {miou:.4f}",
                )
            )
        for label in variants:
            if label != best:
                report.add(
                    Row(
                        "torchgeo",
                        name,
                        size,
                        label,
                        [single[label]],
                        tiles.n,
                        "tile",
                        f"{note}; one run (slower variant); "
                        f"mIoU {scores[label].compute().miou:.4f}",
                        background=single_bg[label],
                    )
                )
        ours_t, theirs_t = times.values()
        miou_text = "; ".join(
            f"mIoU ours {result.miou:.6f} vs {label.removeprefix('torchgeo ')} "
            f"{scores[label].compute().miou:.6f} ({_agreement(result.confusion, scores[label])})"
            for label in variants
        )
        report.ratios.append(
            Ratio(
                "ours/torchgeo",
                f"{name} {size}px vs {best.removeprefix('torchgeo ')}",
                paired_ratio(theirs_t, ours_t)[0],
                "ours/torchgeo",
                paired_ratio(theirs_t, ours_t)[1],
            )
        )
        report.facts.append(f"torchgeo {name} {size}px: {miou_text}")
        slow = max(single, key=single.get)  # type: ignore[arg-type]
        report.facts.append(
            f"torchgeo {name} {size}px: ours / {slow} (single run) = "
            f"{single[slow] / min(ours_t):.3f}"
        )
        gc.collect()


# --------------------------------------------------------------------------------------------
# 4. training steps: our LightningModule against a plain loop
# --------------------------------------------------------------------------------------------


def _train_batches(
    tiles: Tiles, crop: int, batch: int, steps: int
) -> list[dict[str, torch.Tensor]]:
    """``steps`` batches of random training crops, made once so both paths get the same ones."""
    from loveda_utils.data.dataset import LoveDASegmentation
    from loveda_utils.data.transforms import train_transforms

    dataset = LoveDASegmentation(tiles.root, "val", tiles.scenes, train_transforms(crop))
    torch.manual_seed(0)
    samples = [dataset[i % len(dataset)] for i in range(steps * batch)]
    return [{"image": s["image"], "mask": s["mask"]} for s in samples]


def measure_train(
    report: Report, store: TileStore, args: argparse.Namespace, settings: Settings, work: Path
) -> None:
    """Section 4: seconds of the same training steps in our Trainer and in a plain loop."""
    import lightning as L
    from torch.utils.data import DataLoader

    from loveda_utils.runtime import precision_dtype, training_precision
    from loveda_utils.training.recipe import get_recipe
    from loveda_utils.training.task import SegmentationTask, poly_factor
    from loveda_utils.training.trainer import build_trainer

    name, steps, warm = args.train_model, args.train_steps, args.train_warmup
    if steps <= warm:
        raise ConfigError(f"--train-steps {steps} must exceed --train-warmup {warm}")
    size = min(args.size)
    mmseg = get_recipe("mmseg")
    crop = args.train_crop or min(mmseg.crop_size, size)
    tiles = store.get(size, min(8, steps * args.train_batch))
    samples = _train_batches(tiles, crop, args.train_batch, steps)
    loader = DataLoader(samples, batch_size=args.train_batch, shuffle=False, num_workers=0)
    accelerator, devices = _accelerator(settings.device)
    # The mmseg recipe over these steps, in the precision the runtime policy trains in.
    precision = training_precision(accelerator)
    recipe = mmseg.replace(
        max_steps=steps, pretrained="none", crop_size=crop, batch_size=args.train_batch,
        precision=precision,
    )

    def new_task() -> SegmentationTask:
        torch.manual_seed(0)  # identical initial weights in both paths
        return SegmentationTask.from_recipe(name, recipe, channels_last=settings.channels_last)

    losses: dict[str, float] = {}

    class StepTimer(L.Callback):
        """Time from the start of step ``warm`` to the end of the last step."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == warm:
                synchronize(pl_module.device)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == steps - 1:
                synchronize(pl_module.device)
                self.seconds = time.perf_counter() - self.start
                losses["lightning"] = float(outputs["loss"])

    runs = 0

    def lightning() -> float:
        nonlocal runs
        runs += 1
        task, timer = new_task(), StepTimer()
        with _quiet_lightning():
            trainer = build_trainer(
                work / f"train-{runs}",
                recipe,
                accelerator=accelerator,
                devices=devices,
                progress=False,
                extra_callbacks=[timer],
            )
            torch.manual_seed(1)
            trainer.fit(task, train_dataloaders=loader)
        return timer.seconds

    def plain() -> float:
        task = new_task()
        model = task.model.to(settings.device).train()
        hp = task.hparams
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: poly_factor(s, steps, hp.poly_power, hp.lr, min(hp.min_lr, hp.lr))
        )
        amp = precision_dtype(precision)
        scaler = torch.amp.GradScaler(enabled=amp == torch.float16)
        torch.manual_seed(1)
        start = time.perf_counter()
        for i, batch in enumerate(loader):
            if i == warm:
                synchronize(settings.device)
                start = time.perf_counter()
            images = batch["image"].to(settings.device, non_blocking=True)
            if settings.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            mask = batch["mask"].to(settings.device, non_blocking=True)
            context = (
                torch.autocast(settings.device.type, dtype=amp) if amp else contextlib.nullcontext()
            )
            with context:
                logits, aux = model.forward_train(images)
                loss = task.loss(logits, aux, mask)["loss"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        synchronize(settings.device)
        losses["plain"] = float(loss.detach())
        return time.perf_counter() - start

    progress(
        f"training steps, {name}: crop {crop}, batch {args.train_batch}, {steps} steps "
        f"({warm} untimed), precision {precision}"
    )
    times = interleave(
        {"ours: SegmentationTask + Trainer": lightning, "plain PyTorch loop": plain},
        settings.rounds,
    )
    report.facts.append(
        _lightning_overhead(
            lightning,
            steps,
            statistics.median(times["ours: SegmentationTask + Trainer"]) / (steps - warm),
        )
    )
    timed = steps - warm
    note = (
        f"crop {crop}, batch {args.train_batch}, {precision}; final loss "
        f"lightning {losses['lightning']:.5f} plain {losses['plain']:.5f}"
    )
    for path, seconds in times.items():
        report.add(Row("train", name, crop, path, seconds, timed, "step", note))
    ours_t, plain_t = times.values()
    value, detail = paired_ratio(plain_t, ours_t)
    report.ratios.append(
        Ratio(
            "lightning/plain steps",
            f"{name} crop {crop} batch {args.train_batch}",
            value,
            "lightning/plain",
            f"{detail}; {timed} timed steps per run",
        )
    )


def _lightning_overhead(fit: Callable[[], float], steps: int, step_seconds: float) -> str:
    """Lightning's own Python time per step, from one more fit under ``cProfile``.

    Unlike the timed ratio this does not depend on how the shared host drifts: it sums the
    time spent in the lightning package's own code (not in torch ops it calls) over the fit.
    """
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    fit()
    profiler.disable()
    own = sum(
        stat[2]  # tottime: time in the function itself
        for (filename, _, _), stat in pstats.Stats(profiler).stats.items()  # type: ignore[attr-defined]
        if f"{os.sep}lightning{os.sep}" in filename
    )
    per_step = own / steps
    return (
        f"train: Lightning's own Python code took {1000 * per_step:.2f} ms per step in a "
        f"profiled fit (setup and teardown included), {100 * per_step / step_seconds:.2f}% of "
        f"a {1000 * step_seconds:.0f} ms step"
    )


# --------------------------------------------------------------------------------------------
# 5. fps against torch.utils.benchmark
# --------------------------------------------------------------------------------------------


def measure_fps_check(report: Report, args: argparse.Namespace, settings: Settings) -> None:
    """Section 5: ``measure_fps`` (median fps) against ``torch.utils.benchmark.Timer``."""
    from torch.utils import benchmark

    name, size = args.fps_model, args.fps_size
    model = _model(name, settings)
    progress(
        f"fps, {name} at {size} px: measure_fps ({args.fps_images} images) vs torch.utils.benchmark"
    )
    image = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device=settings.device)
    if settings.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    budget: list[float] = []

    def ours() -> float:
        speed = measure_fps(
            model,
            size=size,
            n_images=args.fps_images,
            warmup=5,
            device=settings.device,
            channels_last=settings.channels_last,
            amp=settings.amp_dtype is not None,
        )
        budget.append(args.fps_images / speed.fps)
        return 1.0 / speed.fps  # seconds per image (median)

    def independent() -> float:
        timer = benchmark.Timer(
            stmt="model(image).argmax(1)",
            globals={"model": model, "image": image},
            num_threads=torch.get_num_threads(),  # the Timer's default is 1 thread
            label="bench-pipeline",
        )
        with torch.inference_mode(), settings.autocast():
            measurement = timer.blocked_autorange(min_run_time=max(budget[-1] if budget else 2, 1))
        return measurement.median

    times = interleave(
        {"measure_fps (ours, median)": ours, "torch.utils.benchmark (median)": independent},
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
            f"(medians); {detail}",
        )
    )
    gc.collect()


# --------------------------------------------------------------------------------------------
# 6. peak memory against the number of tiles
# --------------------------------------------------------------------------------------------


def _rss_gb(field: str = "VmRSS") -> float:
    """Resident memory of this process (GiB) from /proc/self/status: ``VmRSS`` now, ``VmHWM``
    its peak; 0 where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so ``VmHWM`` then measures from now."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory_child(spec_json: str) -> None:
    """In a fresh process: one whole evaluation, then its peak memory as one JSON line."""
    from loveda_utils.data.datamodule import LoveDADataModule
    from loveda_utils.evaluation.inference import evaluate
    from loveda_utils.models.registry import build_model

    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = build_model(spec["model"], pretrained="none").eval().to(device)
    rss_model = _rss_gb()
    # ru_maxrss would carry the parent's size over fork+exec; VmHWM, reset here, is this
    # process's own peak from the model onwards.
    hwm = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    datamodule = LoveDADataModule(
        spec["root"],
        eval_split="val",
        eval_scenes=spec["scenes"],
        eval_batch_size=spec["batch_size"],
        num_workers=spec["workers"],
    )
    rss_batches: list[float] = []

    def batches(loader):  # resident memory as each batch arrives: growth would show here
        for batch in loader:
            rss_batches.append(_rss_gb())
            yield batch

    start = time.perf_counter()
    result = evaluate(model, batches(datamodule.val_dataloader()), device=device)
    seconds = time.perf_counter() - start
    del datamodule
    gc.collect()  # joins the workers, so their peak lands in RUSAGE_CHILDREN
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    out = {
        "n_images": result.n_images,
        "seconds": seconds,
        "rss_after_model_gb": rss_model,
        "rss_second_batch_gb": rss_batches[min(1, len(rss_batches) - 1)],
        "rss_last_batch_gb": rss_batches[-1],
        "peak_rss_gb": _rss_gb("VmHWM")
        if hwm
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1024**3,
        "peak_source": "VmHWM from the model on" if hwm else "ru_maxrss",
        "peak_worker_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        * scale
        / 1024**3,
        "cuda_peak_gb": torch.cuda.max_memory_allocated(device) / 1024**3
        if device.type == "cuda"
        else None,
        "miou": result.miou,
    }
    print("MEMORY " + json.dumps(out), flush=True)


def measure_memory(
    report: Report, store: TileStore, args: argparse.Namespace, settings: Settings
) -> None:
    """Section 6: peak memory of evaluations of growing length, each in a fresh process."""
    name, size = args.memory_model, args.memory_size
    peaks: dict[int, dict[str, Any]] = {}
    for n in args.memory_tiles:
        tiles = store.get(size, n)
        spec = {
            "model": name,
            "root": str(tiles.root),
            "scenes": list(tiles.scenes),
            "batch_size": settings.batch_size,
            "workers": settings.workers,
            "device": str(settings.device),
            "threads": torch.get_num_threads(),
        }
        progress(f"memory, {name} at {size} px: {n} tiles in a fresh process ...")
        code = "import sys; from benchmarks.pipeline import _memory_child; _memory_child(sys.argv[1])"
        done, background = timed(
            partial(
                subprocess.run,
                [sys.executable, "-c", code, json.dumps(spec)],
                capture_output=True,
                text=True,
                cwd=PROJECT_ROOT,
                check=False,
            )
        )
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("MEMORY ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"memory probe for {n} tiles failed:\n{done.stderr[-2000:]}")
        peaks[n] = json.loads(line.removeprefix("MEMORY "))
        p = peaks[n]
        cuda = f"; CUDA peak {p['cuda_peak_gb']:.3f} GiB" if p["cuda_peak_gb"] is not None else ""
        workers = f"; largest worker {p['peak_worker_rss_gb']:.3f} GiB" if settings.workers else ""
        report.add(
            Row(
                "memory",
                name,
                size,
                f"evaluate {n} tiles (fresh process)",
                [p["seconds"]],
                n,
                "tile",
                f"peak RSS {p['peak_rss_gb']:.3f} GiB ({p['peak_source']}); RSS model loaded "
                f"{p['rss_after_model_gb']:.3f}, at batch 2 {p['rss_second_batch_gb']:.3f}, at "
                f"the last batch {p['rss_last_batch_gb']:.3f}{workers}{cuda}",
                background=background,
            )
        )
    low, high = min(peaks), max(peaks)
    key = "cuda_peak_gb" if peaks[low]["cuda_peak_gb"] is not None else "peak_rss_gb"
    report.ratios.append(
        Ratio(
            f"memory {high}/{low} tiles",
            f"{name} {size}px ({key.removesuffix('_gb')})",
            peaks[high][key] / peaks[low][key],
            "memory 128/8 tiles",
            ", ".join(f"{n}: {p[key]:.3f} GiB" for n, p in peaks.items()),
        )
    )


# --------------------------------------------------------------------------------------------
# 7. ablation: what each optimisation is worth
# --------------------------------------------------------------------------------------------


def _float_in_workers() -> Callable:
    """An eval pipeline that turns images into float32 (0..255) in the workers: 4x the bytes."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from loveda_utils.data.transforms import ToPlainTensors, ToTVTensors

    return v2.Compose(
        [
            ToTVTensors(),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=False),
            ToPlainTensors(),
        ]
    )


def _kernel_ms(fn: Callable[[], Any], reps: int = 20) -> float:
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
    from loveda_utils.data.pngio import read_png, read_png_pillow
    from loveda_utils.evaluation.inference import labels_from_logits
    from loveda_utils.evaluation.metrics import PerSceneConfusion

    name, size = args.model[0], min(args.size)
    model = _model(name, settings)
    probe = _loaded_batches(store.get(size, 1), settings)[:1]
    time_ceiling(model, probe, settings)
    tiles = store.get(size, _tile_count(args, time_ceiling(model, probe, settings)))
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
    from loveda_utils.data.dataset import LoveDASegmentation

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


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(t.strip()) for t in text.split(",") if t.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``bench-pipeline``."""
    parser.add_argument(
        "--model",
        type=_csv(str),
        default=list(DEFAULT_MODELS),
        help="comma-separated registry models for ceiling/ours "
        f"(default: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--size",
        type=_csv(int),
        default=None,
        help="comma-separated tile sides in px (default: 512,1024; with "
        "--data-root: its tile size)",
    )
    parser.add_argument(
        "--tiles",
        type=int,
        default=None,
        help="tiles per timed pass (default: enough for ~--pass-seconds, 1..32)",
    )
    parser.add_argument(
        "--pass-seconds",
        type=float,
        default=2.0,
        help="target length of one timed pass when --tiles is not given",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="a LoveDA root to read tiles from (default: the real sample at "
        "1024 px, else a generated mini-LoveDA in the work folder)",
    )
    parser.add_argument("--split", default="val", help="split of --data-root (default val)")
    parser.add_argument("--scenes", default="both", help="scenes of --data-root (default both)")
    parser.add_argument(
        "--sample-root",
        default=str(DEFAULT_SAMPLE_ROOT),
        help="the real LoveDA sample used at 1024 px (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="loader workers for ours and torchgeo alike (default: the "
        "DataModule's, one per core up to 8)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help="evaluation batch (default 1, MMSeg's)"
    )
    parser.add_argument(
        "--measure",
        type=_csv(str),
        default=list(MEASUREMENTS),
        help=f"comma-separated subset of {','.join(MEASUREMENTS)} (default: all)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=11,
        help="interleaved repetitions of each timed path (default 11)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for every path (default: the CPU count)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time a torch.compile'd model (compilation not timed)",
    )
    parser.add_argument(
        "--torchgeo-model",
        default=DEFAULT_TORCHGEO_MODEL,
        help="smp UNet built by both paths (default %(default)s)",
    )
    parser.add_argument(
        "--torchgeo-size",
        type=_csv(int),
        default=None,
        help="tile sides of the torchgeo comparison (default: the smallest --size)",
    )
    parser.add_argument(
        "--train-model",
        default=None,
        help="model for the training steps (default: the first --model)",
    )
    parser.add_argument("--train-steps", type=int, default=12, help="steps per run (default 12)")
    parser.add_argument(
        "--train-warmup", type=int, default=2, help="first steps left out of the timing (default 2)"
    )
    parser.add_argument("--train-batch", type=int, default=2, help="training batch (default 2)")
    parser.add_argument(
        "--train-crop",
        type=int,
        default=None,
        help="training crop (default: the smallest --size, at most 512)",
    )
    parser.add_argument("--fps-model", default=None, help="default: the first --model")
    parser.add_argument("--fps-size", type=int, default=None, help="default: the largest --size")
    parser.add_argument(
        "--fps-images",
        type=int,
        default=10,
        help="timed images of measure_fps per round (default 10)",
    )
    parser.add_argument(
        "--memory-tiles",
        type=_csv(int),
        default=[8, 32, 128],
        help="tile counts of the memory runs (default 8,32,128)",
    )
    parser.add_argument("--memory-model", default=None, help="default: the first --model")
    parser.add_argument(
        "--memory-size", type=int, default=None, help="default: the smallest --size"
    )
    parser.add_argument(
        "--work-dir", default=None, help="where tiles are written (default: a new temporary folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a measured ratio misses its target"
    )


def _validate(args: argparse.Namespace) -> None:
    from loveda_utils.models.registry import get_spec

    unknown = sorted(set(args.measure) - set(MEASUREMENTS))
    if unknown:
        raise ConfigError(f"--measure {','.join(unknown)}: choose from {','.join(MEASUREMENTS)}")
    for name in (
        *args.model,
        args.torchgeo_model,
        args.train_model,
        args.fps_model,
        args.memory_model,
    ):
        if name is not None:
            get_spec(name)  # UnknownModelError lists the registry
    for flag, value in (
        ("--rounds", args.rounds),
        ("--batch-size", args.batch_size),
        ("--train-steps", args.train_steps),
        ("--train-batch", args.train_batch),
        ("--fps-images", args.fps_images),
    ):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be at least 1")
    if args.tiles is not None and args.tiles < 1:
        raise ConfigError(f"--tiles {args.tiles}: must be at least 1")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: must be 0 or more")
    for flag, sizes in (("--size", args.size), ("--torchgeo-size", args.torchgeo_size)):
        if any(s < 32 or s % 32 for s in sizes):
            raise ConfigError(f"{flag} {sizes}: sides must be multiples of 32 (smp's UNet)")
    if not args.model:
        raise ConfigError("--model is empty: name at least one registry model")


def machine_facts(settings: Settings) -> list[str]:
    """Where the numbers come from: CPU, cores, threads, versions, date, load."""
    import importlib.metadata as md

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "absent"

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return [
        f"machine: {device_name('cpu')}, {os.cpu_count()} logical CPUs, {platform.platform()}",
        f"device: {device_name(settings.device)}; torch threads {torch.get_num_threads()}",
        f"versions: python {platform.python_version()}, torch {torch.__version__}, torchvision "
        f"{version('torchvision')}, torchgeo {version('torchgeo')}, lightning "
        f"{version('lightning')}, segmentation-models-pytorch "
        f"{version('segmentation-models-pytorch')}",
        f"date: {datetime.now(UTC).isoformat(timespec='seconds')}; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"settings: batch {settings.batch_size}, {settings.workers} workers, channels_last "
        f"{settings.channels_last}, amp {settings.amp_dtype}, {settings.rounds} rounds, "
        "inference_mode",
    ]


def run(args: argparse.Namespace) -> int:
    """Run the selected measurements; print the table, then the ratios. Returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        if args.data_root and args.size is None:
            args.size = [_png_size(_first_image(args))]
        args.size = args.size or list(DEFAULT_SIZES)
        args.train_model = args.train_model or args.model[0]
        args.fps_model = args.fps_model or args.model[0]
        args.fps_size = args.fps_size or max(args.size)
        args.memory_model = args.memory_model or args.model[0]
        args.memory_size = args.memory_size or min(args.size)
        args.torchgeo_size = args.torchgeo_size or [min(args.size)]
        _validate(args)
        settings = _settings(args)
    except LoveDAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    which = set(args.measure)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report()
    report.facts += machine_facts(settings)
    started = time.perf_counter()
    try:
        store = TileStore(work, args)
        if which & {"ceiling", "ours"}:
            measure_ceiling_ours(report, store, args, settings, which)
        if "torchgeo" in which:
            measure_torchgeo(report, store, args, settings)
        if "train" in which:
            measure_train(report, store, args, settings, work)
        if "fps" in which:
            measure_fps_check(report, args, settings)
        if "memory" in which:
            measure_memory(report, store, args, settings)
        if "ablation" in which:
            measure_ablation(report, store, args, settings)
    except LoveDAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    report.facts.append(
        f"wall time {time.perf_counter() - started:.0f} s; load average at the "
        f"end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print("\n".join(f"# {fact}" for fact in report.facts))
    print()
    print(format_table(report.rows))
    print()
    for ratio in report.ratios:
        print(ratio.format())
    missed = [r for r in report.ratios if r.met is False]
    return 1 if args.strict and missed else 0


def _first_image(args: argparse.Namespace) -> Path:
    from loveda_utils.data.dataset import LoveDASegmentation

    dataset = LoveDASegmentation(args.data_root, args.split, args.scenes)
    if not dataset.files:
        raise ConfigError(f"--data-root {args.data_root}: no {args.split} tiles found")
    return Path(dataset.files[0]["image"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description="Time the evaluation path against the model's ceiling and torchgeo's path.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
