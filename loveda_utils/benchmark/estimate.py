"""Plan a GPU budget: time a few training steps and one evaluation forward per model, then
project the whole schedule (``python -m loveda_utils estimate``).

Each model is timed in a fresh process (a clean peak-memory counter), through the same training
path as a real run (:func:`loveda_utils.training.trainer.fit`), and its evaluation forward in
the precision and memory format the run's evaluation would use (:func:`evaluation_settings`:
fp32 unless the parameters ask for ``eval_amp``, as the table's evaluation), and its
multiply-adds and FLOPs counted as the record counts them
(:func:`loveda_utils.benchmark.measure.count_complexity` at ``flops_size``). Weights do not
change these costs, so models are built with random initialisation (``pretrained="none"``: no
weight file needs fetching first) unless the overrides name weights.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..data.root import resolve_data_root
from ..data.synthetic import is_synthetic
from ..errors import check_int
from ..evaluation.inference import MS_FLIP_SCALES
from ..models.registry import get_spec
from ..runtime import amp_dtype, autocast, channels_last_for, resolve_device, synchronize
from ..training.recipe import Recipe
from ..training.trainer import build_datamodule, fit
from .config import BenchmarkConfig
from .measure import count_complexity, count_params
from .profiles import Profile, get_profile


@dataclass(frozen=True)
class Timing:
    """What the child process measured for one model, under the names of :data:`COLUMNS`."""

    params_m: float
    gmacs: float  # one forward at 1 x 3 x flops_size x flops_size, as the record's gmacs
    gflops: float
    flops_size: int
    s_per_iter: float  # median over the steps after the first ones (warm-up)
    s_per_tile: float  # one whole-tile forward + argmax at the eval tiles' size
    eval_tiles: int
    eval_precision: str  # what that forward ran in: "fp32" or the autocast dtype
    peak_mem_gb: float | None
    mem_source: str | None

    def projected_hours(self, recipe: Recipe, ms_flip: bool) -> dict[str, float]:
        """Hours of the recipe's whole schedule and of the evaluation of every eval tile."""
        # ms+flip costs one pass per scale and flip, in proportion to the scaled pixel count.
        passes = 1 + (2 * sum(s * s for s in MS_FLIP_SCALES) if ms_flip else 0)
        return {
            "train_hours": self.s_per_iter * recipe.max_steps / 3600,
            "eval_hours": self.s_per_tile * passes * self.eval_tiles / 3600,
        }


#: The columns of :func:`estimate`'s table, in order: the model, the shape of its run (the
#: recipe's crop, batch and schedule), then what one model's timing measured and projects.
COLUMNS = (
    "model", "method", "backbone", "params_m", "gmacs", "gflops", "flops_size",
    "crop_size", "batch_size", "lr_schd",
    "s_per_iter", "train_hours", "eval_hours", "eval_precision", "peak_mem_gb", "mem_source",
)  # fmt: skip


class StepTimer(L.Callback):
    """Seconds of each training step, the device synchronised at both ends."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        self.times.append(time.perf_counter() - self._start)


def evaluation_settings(
    device: torch.device, params: Mapping[str, Any]
) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or ``None``, channels-last) of a run's evaluation with ``params`` on
    ``device``: what :meth:`~loveda_utils.benchmark.run.BenchmarkRun.evaluate` passes to
    :func:`~loveda_utils.evaluation.loop.evaluate` (``eval_amp``, default fp32 on every
    device, and ``channels_last``, default the runtime's choice for that precision)."""
    dtype = amp_dtype(device, bool(params.get("eval_amp", BenchmarkConfig.eval_amp)))
    channels_last = params.get("channels_last")
    if channels_last is None:
        channels_last = channels_last_for(device, dtype)
    return dtype, bool(channels_last)


def _time_model(model: str, params: Mapping[str, Any], steps: int) -> Timing:
    recipe = Recipe.from_params(params)
    accelerator = params.get("accelerator", "auto")
    datamodule = build_datamodule(recipe, params["data_root"], num_workers=params.get("num_workers"),
                                  limit_eval_images=params.get("limit_eval_images"))
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trained = fit(recipe, datamodule, tmp, model=model, max_steps=steps, resume=False,
                      channels_last=bool(params.get("channels_last")), accelerator=accelerator,
                      devices=1, progress=False, extra_callbacks=[timer])
    warm = timer.times[2:] if len(timer.times) > 3 else timer.times[1:] or timer.times
    # One whole-tile forward, run as the run's evaluate() would run it, to project the evaluation.
    device = resolve_device(accelerator)
    dtype, channels_last = evaluation_settings(device, params)
    net = trained.task.model.to(device).eval()
    side = datamodule.eval_tile_size()[0]
    image = torch.zeros(1, 3, side, side, dtype=torch.uint8, device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, dtype):
        net(image)
        synchronize(device)
        start = time.perf_counter()
        net(image).argmax(1)
        synchronize(device)
        per_tile = time.perf_counter() - start
    complexity = count_complexity(net, int(params.get("flops_size") or BenchmarkConfig.flops_size))
    return Timing(
        params_m=count_params(trained.task.model),
        gmacs=complexity.gmacs,
        gflops=complexity.gflops,
        flops_size=complexity.size,
        s_per_iter=sorted(warm)[len(warm) // 2],
        s_per_tile=per_tile,
        eval_tiles=len(datamodule.eval_data()),
        eval_precision=str(dtype).removeprefix("torch.") if dtype is not None else "fp32",
        peak_mem_gb=trained.peak_memory_gb,
        mem_source=trained.memory_source,
    )


def _estimate_one(model: str, params: Mapping[str, Any], steps: int, queue) -> None:
    """In a fresh process (clean peak memory): put the model's :class:`Timing`, or the error
    that stopped it, on ``queue``."""
    try:
        queue.put(_time_model(model, params, steps))
    except Exception as exc:  # reported per model, the others go on
        queue.put(f"{type(exc).__name__}: {exc}")


def estimate(
    profile: str | Profile = "quick",
    models: Sequence[str] | None = None,
    data_root: str | Path | None = None,
    steps: int = 6,
    overrides: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
):
    """Plan a GPU budget: a few iterations per model, then the projected time of the whole
    schedule (training and evaluation), parameters, multiply-adds and FLOPs of one forward, and
    peak training memory. Models start from random weights unless ``overrides`` set
    ``pretrained`` (module docstring).

    Returns a ``pandas.DataFrame``, one model per row, :data:`COLUMNS` (and an ``error``
    column, the measured cells empty, where a model failed).
    """
    import pandas as pd

    check_int("steps", steps)  # timed in a child process: refused here, named
    prof = get_profile(profile)
    root = resolve_data_root(data_root)
    names = list(models) if models else list(prof.models)
    for name in names:
        get_spec(name)
    context = multiprocessing.get_context("spawn")
    rows = []
    for i, name in enumerate(names, 1):
        params = prof.params_for(name, is_synthetic(root)) | {"pretrained": "none"}
        params |= dict(overrides or {})
        params["data_root"] = str(root)
        recipe = Recipe.from_params(params)
        log(f"[{i}/{len(names)}] estimating {name} ({steps} iterations)...")
        queue = context.Queue()
        process = context.Process(target=_estimate_one, args=(name, params, steps, queue))
        process.start()
        process.join()
        found = queue.get() if not queue.empty() else f"exit code {process.exitcode}"
        spec = get_spec(name)
        row: dict[str, Any] = {
            "model": name, "method": spec.method, "backbone": spec.backbone,
            "crop_size": recipe.crop_size, "batch_size": recipe.batch_size,
            "lr_schd": recipe.max_steps,
        }
        if isinstance(found, Timing):
            ms_flip = bool(params.get("ms_flip"))
            row |= dataclasses.asdict(found) | found.projected_hours(recipe, ms_flip)
        else:
            row["error"] = str(found)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "error"])  # a model's missing cells: NaN
    return frame.drop(columns="error") if frame["error"].isna().all() else frame
