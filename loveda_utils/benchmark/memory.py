"""Mem (GB) as MMSeg's model zoo means it, whatever schedule the run itself trained with.

MMSeg's Mem column is ``torch.cuda.max_memory_allocated`` (read by mmengine's logger) while
training the config's schedule: 4 images per GPU in fp32 with SyncBN (on one device SyncBN is
BatchNorm), SGD with momentum, ``cudnn.benchmark`` on (mmsegmentation's
``configs/_base_/default_runtime.py``). :func:`measure_training_memory` measures exactly that
quantity with a short probe: :data:`MEM_STEPS` optimiser steps of the run's model at that
setting (random weights and a random batch: memory does not depend on their values) in a
fresh process, so nothing the run holds (its weights, its evaluation, the allocator's cache)
is in the peak.

* CUDA: ``torch.cuda.max_memory_allocated`` over the steps, in GiB.
* elsewhere: the probe process's peak resident memory (``VmHWM`` after a reset on Linux, else
  ``ru_maxrss``), in GiB, labelled ``peak RSS``; it includes the interpreter and libraries.

The probe is ``python -m loveda_utils.benchmark.memory SPEC``: one JSON line on stdout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..runtime import GB, peak_rss_gb, reset_peak_rss, rss_gb, synchronize
from ..training.recipe import Recipe, get_recipe
from ..training.task import SegmentationTask

__all__ = [
    "MEM_BATCH",
    "MEM_PRECISION",
    "MEM_STEPS",
    "PeakMemory",
    "TrainingMemory",
    "measure_training_memory",
    "probe_training_memory",
    "train_steps",
]

#: MMSeg's setting: images per GPU, precision (Lightning's name for fp32), and the recipe whose
#: optimiser and auxiliary-loss weight the probe trains with.
MEM_BATCH = 4
MEM_PRECISION = "32-true"
MEM_RECIPE = "mmseg"
#: Optimiser steps of the probe: the second already holds the optimiser's state beside the
#: activations and gradients, as every later step of a training run does.
MEM_STEPS = 3
#: The line of the probe's stdout that holds its result.
RESULT_PREFIX = "MEMORY "
CUDA_SOURCE = "torch.cuda.max_memory_allocated"
RSS_SOURCE = "peak RSS"


@dataclass(frozen=True)
class TrainingMemory:
    """Peak training memory and the setting it was measured at (the record's ``mem_*``)."""

    gb: float
    source: str
    batch: int
    crop: int
    precision: str
    steps: int
    optimizer: str
    cudnn_benchmark: bool

    def protocol(self) -> dict[str, Any]:
        """The record's ``mem_protocol``: every field but the measured ``gb`` and ``source``."""
        setting = dataclasses.asdict(self)
        del setting["gb"], setting["source"]
        return setting


class PeakMemory:
    """Peak memory of this process on ``device`` from construction on, in GiB."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            self.source = CUDA_SOURCE
            torch.cuda.reset_peak_memory_stats(self.device)
            self._high_water = False
        else:
            self.source = RSS_SOURCE
            self._high_water = reset_peak_rss()

    def read(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GB
        return rss_gb("VmHWM") if self._high_water else peak_rss_gb()


def probe_recipe(crop: int) -> Recipe:
    """The recipe the probe trains: MMSeg's optimiser and losses at its batch and precision,
    with ``crop`` (the row's Crop Size) and random initial weights (nothing to load)."""
    return get_recipe(MEM_RECIPE).replace(
        crop_size=crop, batch_size=MEM_BATCH, precision=MEM_PRECISION, pretrained="none"
    )


def train_steps(model: str, recipe: Recipe, device: torch.device, steps: int, seed: int = 0) -> None:
    """``steps`` training steps of registry ``model`` on one random batch, in fp32 and NCHW, as
    mmengine's optimiser wrapper runs them: forward with the losses, backward, optimiser step,
    gradients released (``zero_grad(set_to_none=True)``) before the next forward pass."""
    torch.manual_seed(seed)
    task = SegmentationTask.from_recipe(model, recipe)
    net = task.model.to(device).train()
    optimizer = task.configure_optimizers()["optimizer"]
    generator = torch.Generator().manual_seed(seed)
    shape = (recipe.batch_size, recipe.crop_size, recipe.crop_size)
    images = torch.randint(0, 256, (shape[0], 3, *shape[1:]), dtype=torch.uint8, generator=generator)
    masks = torch.randint(0, 7, shape, dtype=torch.uint8, generator=generator)
    images, masks = images.to(device), masks.to(device)
    for _ in range(steps):
        logits, aux = net.forward_train(images)
        loss = task.loss(logits, aux, masks)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)


def probe_training_memory(model: str, crop: int, device: torch.device | str,
                          steps: int = MEM_STEPS) -> TrainingMemory:  # fmt: skip
    """The probe's body, in this process: peak memory of :func:`train_steps` at MMSeg's
    setting (:func:`probe_recipe`), counted from just before the steps."""
    device = torch.device(device)
    recipe = probe_recipe(crop)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as MMSeg trains (env_cfg.cudnn_benchmark)
    try:
        peak = PeakMemory(device)
        train_steps(model, recipe, device, steps)
        gb = peak.read()
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
    return TrainingMemory(
        gb=gb, source=peak.source, batch=recipe.batch_size, crop=recipe.crop_size,
        precision=recipe.precision or MEM_PRECISION, steps=steps, optimizer=recipe.optimizer,
        cudnn_benchmark=True,
    )  # fmt: skip


def measure_training_memory(model: str, crop: int, device: torch.device | str,
                            steps: int = MEM_STEPS) -> TrainingMemory:  # fmt: skip
    """MMSeg's Mem of registry ``model`` at training crop ``crop`` on ``device``: the probe
    (:func:`probe_training_memory`) in a fresh process with this process's torch threads.

    Raises:
        RuntimeError: the probe failed; the message holds the end of its error output.
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: the probe needs at least one training step")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # leave the probe the memory this process no longer uses
    spec = {"model": model, "crop": crop, "device": str(device), "steps": steps,
            "threads": torch.get_num_threads()}  # fmt: skip
    # The probe imports this package from where this process did (an editable install may
    # point elsewhere than the checkout in use).
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", __name__, json.dumps(spec)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(
            f"the training-memory probe of {model!r} (batch {MEM_BATCH}, crop {crop}, fp32, "
            f"{steps} steps on {device}) failed with exit code {done.returncode}; set "
            f"mem_steps=0 to skip it (Mem is then null). Its error output ends:\n"
            f"{done.stderr[-3000:]}"
        )
    return TrainingMemory(**json.loads(line.removeprefix(RESULT_PREFIX)))


def main(argv: list[str]) -> int:
    """The probe process: ``SPEC`` (JSON: model, crop, device, steps, threads) -> one line."""
    spec = json.loads(argv[0])
    torch.set_num_threads(spec["threads"])
    result = probe_training_memory(spec["model"], spec["crop"], spec["device"], spec["steps"])
    print(RESULT_PREFIX + json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
