"""For the day a GPU is lent: one command that runs the checks only a GPU can answer and prints
one table.

    python -m benchmarks.gpu_check               # one GPU, under 8 minutes
    python -m benchmarks.gpu_check --cpu-smoke   # the same checks, tiny, on the CPU (CI)

Rows, in order (every one is printed, a failed check as ``FAILED`` with its error; the exit code
is then 1):

1. ``fit``: a short fit of each ``--models`` entry (:func:`loveda_utils.training.trainer.fit`,
   the ``mmseg`` recipe at ``--size`` px crops and ``--batch`` images), in fp32 and under AMP:
   steps/s after ``--warmup-steps`` untimed steps, and the peak memory of the fit.
2. ``mem``: MMSeg's Mem of each model (``loveda_utils/benchmark/memory.py``: a fresh process
   training 4 images in fp32 at ``--size``).
3. ``fps``: each model at ``--fps-size`` px by MMSeg's definition and under our settings
   (``loveda_utils/benchmark/measure.py``).
4. ``eval``: the evaluation path (PNG files to the confusion matrix through
   :func:`loveda_utils.evaluation.loop.evaluate`) against the forward pass alone, the
   ceiling (``benchmarks/pipeline/ceiling.py``), on ``--tiles`` tiles of ``--fps-size`` px,
   interleaved over ``--rounds``.
5. ``loader``: samples/s of the training loader with the default workers against the samples/s
   the fastest fit consumed: below 1, training waits for data.

Data: ``--data-root`` (real LoveDA), else the real LoveDA sample (``$LOVEDA_SAMPLE``, 1024 px
tiles of Train/Rural), else a generated mini-LoveDA in the work folder (``--tile-size``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch

from loveda_utils.benchmark.measure import measure_fps, measure_fps_fast
from loveda_utils.benchmark.memory import MEM_BATCH, measure_training_memory
from loveda_utils.data.datamodule import LoveDADataModule
from loveda_utils.data.synthetic import generate_mini_loveda
from loveda_utils.errors import ConfigError, LoveDAError
from loveda_utils.models.registry import get_spec
from loveda_utils.runtime import (
    LIGHTNING_PRECISION,
    amp_dtype,
    device_name,
    resolve_device,
    synchronize,
)
from loveda_utils.training.recipe import Recipe, get_recipe
from loveda_utils.training.trainer import build_datamodule, fit

from .pipeline.ceiling import ours_seconds, time_ceiling
from .pipeline.settings import (
    lightning_accelerator,
    loaded_batches,
    quiet_lightning,
    random_model,
    settings_from_args,
)
from .pipeline.tiles import DEFAULT_SAMPLE_ROOT, TileStore
from .pipeline.timing import interleave, paired_ratio

#: One GPU, the whole check: what the defaults are sized for.
BUDGET_SECONDS = 8 * 60
#: MMSeg's reference row (DeepLabV3+ R-50) and a light transformer.
DEFAULT_MODELS = ("deeplabv3plus_resnet50", "segformer_mit_b0")
#: ``--cpu-smoke``: the same checks at sizes a CPU runs in about a minute.
CPU_SMOKE = {
    "device": "cpu", "size": 64, "batch": MEM_BATCH, "steps": 2, "warmup_steps": 1,
    "fps_size": 64, "fps_images": 2, "fps_warmup": 1, "tiles": 2, "rounds": 1,
    "loader_batches": 2, "mem_steps": 1, "tile_size": 64, "sample_root": None,
}  # fmt: skip


@dataclass
class Row:
    """One line of the table."""

    check: str
    model: str
    setting: str
    result: str
    detail: str = ""
    failed: bool = False


@dataclass
class Context:
    """What the checks share: the arguments, the device, the work folder, the fit's data."""

    args: argparse.Namespace
    device: torch.device
    work: Path
    fit_root: Path | None = None
    fit_scenes: str = "both"
    fit_eval_split: str = "val"
    fit_source: str = ""
    consumed: tuple[float, str] | None = None  # fastest fit: (samples/s, which)


def _fit_data(ctx: Context) -> None:
    """Where the fits read their tiles: ``--data-root``, else the real sample, else synthetic."""
    args = ctx.args
    if ctx.fit_root is not None:
        return
    if args.data_root:
        ctx.fit_root, ctx.fit_source = Path(args.data_root), f"{args.data_root} (Train)"
        return
    sample = Path(args.sample_root) if args.sample_root else None
    if sample is not None and (sample / "Train" / "Rural" / "images_png").is_dir():
        # The sample holds Train/Rural only: the (unused) eval split is pointed there too.
        ctx.fit_root, ctx.fit_scenes, ctx.fit_eval_split = sample, "rural", "train"
        ctx.fit_source = f"real LoveDA sample {sample} (Train/Rural)"
        return
    root = ctx.work / f"fit-synthetic-{args.tile_size}px"
    if not root.exists():
        print(f"generating a mini-LoveDA at {args.tile_size} px in {root} ...", file=sys.stderr)
        # Enough Train tiles for one full batch per epoch (two scenes).
        generate_mini_loveda(root, tiles=math.ceil(args.batch / 2), size=args.tile_size, seed=0)
    ctx.fit_root, ctx.fit_source = root, f"synthetic mini-LoveDA at {args.tile_size} px"


def _datamodule(ctx: Context, recipe: Recipe) -> LoveDADataModule:
    return build_datamodule(
        recipe, ctx.fit_root, train_scenes=ctx.fit_scenes, eval_split=ctx.fit_eval_split,
        eval_scenes=ctx.fit_scenes, num_workers=None,
    )  # fmt: skip


class StepTimer(L.Callback):
    """Seconds from the start of optimiser step ``warm`` to the end of the last one."""

    def __init__(self, warm: int, steps: int) -> None:
        self.warm, self.steps = warm, steps
        self.start = self.seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warm:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.steps:
            synchronize(pl_module.device)
            self.seconds = time.perf_counter() - self.start


def check_fit(ctx: Context, name: str, amp: bool) -> Row:
    """A short fit of ``name`` in fp32 or under AMP (the runtime's autocast dtype): steps/s and
    the peak memory of the fit."""
    args = ctx.args
    precision = LIGHTNING_PRECISION[amp_dtype(ctx.device, True)] if amp else "32-true"
    _fit_data(ctx)
    recipe = get_recipe("mmseg").replace(
        max_steps=args.steps, crop_size=args.size, batch_size=args.batch, pretrained="none",
        precision=precision,
    )  # fmt: skip
    timer = StepTimer(args.warmup_steps, args.steps)
    accelerator, devices = lightning_accelerator(ctx.device)
    with quiet_lightning():
        outcome = fit(
            recipe, _datamodule(ctx, recipe), ctx.work / f"fit-{name}-{precision}", model=name,
            resume=False, accelerator=accelerator, devices=devices, progress=False,
            extra_callbacks=[timer],
        )  # fmt: skip
    timed = args.steps - args.warmup_steps
    rate = timed / timer.seconds
    samples = rate * args.batch
    if ctx.consumed is None or samples > ctx.consumed[0]:
        ctx.consumed = (samples, f"{name} {precision}")
    source = outcome.memory_source
    if source == "peak RSS":  # the process's, which every check so far has added to
        source = "peak RSS of this process so far"
    return Row(
        "fit", name, f"{'AMP' if amp else 'fp32'} ({precision})",
        f"{rate:.2f} steps/s, peak {outcome.peak_memory_gb:.2f} GiB",
        f"{source}; crop {args.size}, batch {args.batch}, {timed} timed steps after "
        f"{args.warmup_steps}; {ctx.fit_source}",
    )  # fmt: skip


def check_mem(ctx: Context, name: str) -> Row:
    """MMSeg's Mem of ``name`` at the fits' crop (a fresh-process probe)."""
    memory = measure_training_memory(name, ctx.args.size, ctx.device, steps=ctx.args.mem_steps)
    return Row(
        "mem", name, f"MMSeg's Mem (batch {memory.batch}, {memory.precision})",
        f"{memory.gb:.2f} GiB",
        f"{memory.source} over {memory.steps} steps, crop {memory.crop}, {memory.optimizer}, "
        "fresh process",
    )  # fmt: skip


def check_fps(ctx: Context, name: str, fast: bool) -> Row:
    """fps of ``name`` at ``--fps-size`` by MMSeg's definition, or under our settings."""
    args = ctx.args
    settings = settings_from_args(_pipeline_args(ctx))
    model = random_model(name, settings)
    timing = {"size": args.fps_size, "n_images": args.fps_images, "warmup": args.fps_warmup}
    measure = measure_fps_fast if fast else measure_fps
    speed = measure(model, device=ctx.device, **timing)
    s = speed.settings
    setting = (
        f"ours ({s.precision}, {'channels-last' if s.channels_last else 'NCHW'})"
        if fast
        else "MMSeg (fp32, NCHW, cudnn.benchmark off)"
    )
    return Row(
        "fps", name, setting, f"{speed.fps:.2f} images/s",
        f"{speed.n_images} timed images after {speed.warmup} warm-up at {speed.size} px, batch 1; "
        f"IQR of per-image fps {speed.fps_spread:.2f}",
    )  # fmt: skip


def _pipeline_args(ctx: Context) -> argparse.Namespace:
    """The arguments ``benchmarks/pipeline`` reads its settings and tiles from."""
    args = ctx.args
    return argparse.Namespace(
        device=str(ctx.device), batch_size=1, workers=None, rounds=args.rounds,
        data_root=args.data_root, split="val", scenes="both", sample_root=args.sample_root,
    )  # fmt: skip


def check_eval(ctx: Context, name: str) -> list[Row]:
    """The evaluation path against the forward ceiling, interleaved over ``--rounds``."""
    args = ctx.args
    pipeline_args = _pipeline_args(ctx)
    settings = settings_from_args(pipeline_args)
    tiles = TileStore(ctx.work, pipeline_args).get(args.fps_size, args.tiles)
    model = random_model(name, settings)
    batches = loaded_batches(tiles, settings)
    time_ceiling(model, batches[:1], settings)  # warm-up (cudnn, allocator)
    results: list[Any] = []
    times = interleave({
        "ceiling": partial(time_ceiling, model, batches, settings),
        "evaluate": partial(ours_seconds, model, tiles, settings, results),
    }, args.rounds)  # fmt: skip
    ceiling, ours = times["ceiling"], times["evaluate"]
    ratio, detail = paired_ratio(ceiling, ours)
    autocast = str(settings.amp_dtype).removeprefix("torch.") if settings.amp_dtype else "off"
    where = (
        f"{tiles.n} tiles of {tiles.size} px ({tiles.source}), batch 1, autocast {autocast}, "
        f"{'channels-last' if settings.channels_last else 'NCHW'}"
    )
    return [
        Row("eval", name, "forward ceiling", f"{tiles.n / min(ceiling):.2f} tiles/s",
            f"model(x) on batches in memory; {where}"),
        Row("eval", name, "evaluate()", f"{tiles.n / min(ours):.2f} tiles/s",
            f"PNG -> confusion matrix, {settings.workers} workers; ours/ceiling {ratio:.2f} "
            f"({detail})"),
    ]  # fmt: skip


def check_loader(ctx: Context) -> Row:
    """Training batches per second of the loader with the default workers, no model."""
    args = ctx.args
    _fit_data(ctx)
    recipe = get_recipe("mmseg").replace(crop_size=args.size, batch_size=args.batch)
    datamodule = _datamodule(ctx, recipe)
    loader = datamodule.train_dataloader()
    workers = datamodule.num_workers

    def forever(batches):  # epochs back to back, as a fit draws them
        while True:
            yield from batches

    stream = forever(loader)
    next(stream)  # the workers' start-up is not the steady rate
    start = time.perf_counter()
    for _ in range(args.loader_batches):
        next(stream)
    rate = args.loader_batches * args.batch / (time.perf_counter() - start)
    del stream, loader, datamodule  # persistent workers exit here
    if ctx.consumed is None:
        versus = "no fit ran to compare with"
    else:
        consumed, which = ctx.consumed
        versus = (
            f"the fastest fit ({which}) consumed {consumed:.1f} samples/s: loader/training "
            f"{rate / consumed:.2f}{' (training waits for data)' if rate < consumed else ''}"
        )
    return Row(
        "loader", "-", f"default workers ({workers})", f"{rate:.1f} samples/s",
        f"{args.loader_batches} train batches of {args.batch} after the first; {versus}",
    )  # fmt: skip


#: A check: (check, model, setting) naming it (and its FAILED row), and what runs it.
Check = tuple[tuple[str, str, str], Callable[[Context], Row | list[Row]]]


def _row_checks(args: argparse.Namespace) -> list[Check]:
    """Every check, in table order."""
    checks: list[Check] = []
    for name in args.models:
        checks.append((("fit", name, "fp32"), partial(check_fit, name=name, amp=False)))
        checks.append((("fit", name, "AMP"), partial(check_fit, name=name, amp=True)))
    for name in args.models:
        checks.append((("mem", name, "MMSeg's Mem"), partial(check_mem, name=name)))
    for name in args.models:
        checks.append((("fps", name, "MMSeg"), partial(check_fps, name=name, fast=False)))
        checks.append((("fps", name, "ours"), partial(check_fps, name=name, fast=True)))
    first = args.models[0]
    checks.append((("eval", first, "ceiling, evaluate()"), partial(check_eval, name=first)))
    checks.append((("loader", "-", "default workers"), check_loader))
    return checks


def format_rows(rows: Sequence[Row]) -> str:
    """The table: one line per row, columns padded to their widest cell."""
    header = ("check", "model", "setting", "result", "detail")
    cells = [header] + [(r.check, r.model, r.setting, r.result, r.detail) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    lines = []
    for k, c in enumerate(cells):
        lines.append("  ".join(f"{v:<{w}}" for v, w in zip(c[:-1], widths, strict=True)) + "  " + c[-1])
        if k == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run every check, print the table; 1 when a check failed."""
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.allow_cpu:
        raise ConfigError(
            f"--device {args.device} resolves to {device}, not a GPU: these checks are for a "
            "GPU; use --cpu-smoke to check that the command works here"
        )
    for name in args.models:
        get_spec(name)  # an unknown model fails before anything runs
    start = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as temporary:
        work = Path(args.work_dir) if args.work_dir else Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(args=args, device=device, work=work)
        for (check, model, setting), run_check in _row_checks(args):
            print(f"{check} {model} {setting} ...", file=sys.stderr, flush=True)
            try:
                out = run_check(ctx)
                rows += out if isinstance(out, list) else [out]
            except Exception as exc:  # one failed check must not hide the others' rows
                traceback.print_exc(file=sys.stderr)
                error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                rows.append(Row(check, model, setting, "FAILED", error, failed=True))
    seconds = time.perf_counter() - start
    print(f"GPU check on {device_name(device)} ({device}); torch {torch.__version__}, CUDA "
          f"{torch.version.cuda or 'none'}")  # fmt: skip
    print(format_rows(rows))
    budget = f" (budget {BUDGET_SECONDS} s on one GPU)" if device.type == "cuda" else ""
    print(f"{len(rows)} rows, {sum(r.failed for r in rows)} failed, {seconds:.0f} s{budget}")
    return 1 if any(r.failed for r in rows) else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    add = parser.add_argument
    add("--cpu-smoke", action="store_true",
        help="tiny sizes on the CPU: checks that the command works (CI), measures nothing")
    add("--device", default="auto", help="'auto', 'cuda', 'cuda:1', or 'cpu' (then slow)")
    add("--models", nargs="+", default=list(DEFAULT_MODELS), help="registry models")
    add("--size", type=int, default=512, help="training crop of the fits and the Mem probe")
    add("--batch", type=int, default=MEM_BATCH, help="training images per step of the fits")
    add("--steps", type=int, default=30, help="optimiser steps per fit")
    add("--warmup-steps", type=int, default=5, help="untimed steps at the start of each fit")
    add("--mem-steps", type=int, default=3, help="training steps of the Mem probe")
    add("--fps-size", type=int, default=1024, help="side of the fps input and the eval tiles")
    add("--fps-images", type=int, default=195, help="timed images (MMSeg: 195)")
    add("--fps-warmup", type=int, default=5, help="untimed images before them (MMSeg: 5)")
    add("--tiles", type=int, default=16, help="tiles of the evaluation-vs-ceiling check")
    add("--rounds", type=int, default=2, help="interleaved rounds of that check")
    add("--loader-batches", type=int, default=20, help="timed batches of the loader check")
    add("--data-root", default=None, help="a LoveDA root (else the real sample or synthetic)")
    add("--sample-root", default=str(DEFAULT_SAMPLE_ROOT), help="the real LoveDA sample")
    add("--tile-size", type=int, default=1024, help="side of generated tiles (no real data)")
    add("--work-dir", default=None, help="keep checkpoints, logs and tiles here (else a temp dir)")
    if parser.parse_known_args(argv)[0].cpu_smoke:
        parser.set_defaults(**CPU_SMOKE)  # flags given beside --cpu-smoke still win
    args = parser.parse_args(argv)
    args.allow_cpu = args.cpu_smoke or args.device == "cpu"
    for name in ("size", "batch", "steps", "mem_steps", "fps_size", "fps_images", "tiles",
                 "rounds", "loader_batches", "tile_size"):  # fmt: skip
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.warmup_steps < args.steps:
        parser.error(f"--warmup-steps {args.warmup_steps} must be in 0..--steps - 1 ({args.steps - 1})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except LoveDAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
