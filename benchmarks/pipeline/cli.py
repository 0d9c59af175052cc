"""The command: its flags, the run of the selected measurements, and what it prints.

The table comes first, the ratios against the targets last; where the numbers come from
(machine, versions, settings, load) is printed with them.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.errors import ConfigError, LoveDAError
from loveda_utils.models.registry import get_spec
from loveda_utils.runtime import device_name

from .ablation import measure_ablation
from .ceiling import measure_ceiling_ours
from .fps import measure_fps_check
from .memory import measure_memory
from .report import Report, format_table
from .settings import Settings, settings_from_args
from .tiles import DEFAULT_SAMPLE_ROOT, TileStore, png_size
from .train import measure_train
from .versus_torchgeo import measure_torchgeo

__all__ = ["MEASUREMENTS", "add_arguments", "main", "run"]

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


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type for comma-separated values of ``kind``."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(t.strip()) for t in text.split(",") if t.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the pipeline benchmark."""
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
    """Refuse flags that cannot run, naming the flag (ConfigError, or UnknownModelError)."""
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
            args.size = [png_size(_first_image(args))]
        args.size = args.size or list(DEFAULT_SIZES)
        args.train_model = args.train_model or args.model[0]
        args.fps_model = args.fps_model or args.model[0]
        args.fps_size = args.fps_size or max(args.size)
        args.memory_model = args.memory_model or args.model[0]
        args.memory_size = args.memory_size or min(args.size)
        args.torchgeo_size = args.torchgeo_size or [min(args.size)]
        _validate(args)
        settings = settings_from_args(args)
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
    dataset = LoveDASegmentation(args.data_root, args.split, args.scenes)
    if not dataset.files:
        raise ConfigError(f"--data-root {args.data_root}: no {args.split} tiles found")
    return Path(dataset.files[0]["image"])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.pipeline`` (``./workbook bench``): parse ``argv``, run, exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description="Time the evaluation path against the model's ceiling and torchgeo's path "
        "(also: ./workbook bench). Figures of a run: benchmarks/RESULTS.md.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
