"""Two-process DDP runs on the CPU (gloo) for ``test_ddp.py``: ``python ddp_cases.py CASE ...``.

A script, not test code: Lightning's DDP launcher starts the second rank by running the same
command line again, and ``torch.multiprocessing.spawn`` needs functions it can import by name.
Each rank writes what it saw to ``OUT``; the test compares the ranks.

Cases:
  crops ROOT OUT SEED   the data module's first training batch on each rank, with 0 and 1 workers
  fit ROOT OUT SEED     Lightning DDP fit + validation: BatchNorm types, batch, crops, pixel count
  syncbn OUT            CPUSyncBatchNorm forward/backward on each rank's half of a batch
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from loveda_utils.data.datamodule import LoveDADataModule
from loveda_utils.evaluation.metrics import all_reduce_counts
from loveda_utils.training.recipe import QUICK
from loveda_utils.training.sync_batchnorm import CPUSyncBatchNorm
from loveda_utils.training.trainer import build_datamodule, fit

WORLD = 2
#: Workers per loader tried by the ``crops`` case (0: the main process draws the augmentations).
CROP_WORKERS = (0, 1)
#: The ``fit`` case's recipe: two steps of two 32 px crops per device.
FIT_RECIPE = QUICK.replace(max_steps=2, batch_size=2, crop_size=32)
#: An odd number of validation tiles: a padded shard would count one of them twice.
VAL_TILES = 3
#: Above 2**24, where float32 stops holding every whole number.
BIG_COUNT = 2**24 + 1
SYNCBN_BATCH, SYNCBN_CHANNELS = 8, 3


def _init(rank: int, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=rank,
                            world_size=WORLD)


def _crops(rank: int, root: str, out: str, seed: int) -> None:
    _init(rank, Path(out))
    L.seed_everything(seed, verbose=False)  # as the notebook and the train command, on every rank
    for workers in CROP_WORKERS:
        dm = LoveDADataModule(root, batch_size=2, crop_size=32, num_workers=workers, seed=seed)
        batch = next(iter(dm.train_dataloader()))
        torch.save({"image": batch["image"], "name": list(batch["name"])},
                   Path(out) / f"crops_w{workers}_rank{rank}.pt")
    dist.destroy_process_group()


class Probe(L.Callback):
    """What the first training batch looked like on this rank, and the model's BatchNorm types."""

    def __init__(self) -> None:
        self.facts: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            norms = {type(m).__name__ for m in pl_module.modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm)}
            self.facts = {"batch": int(batch["image"].shape[0]), "norms": sorted(norms),
                          "first_image": batch["image"].flatten().tolist()}


def _fit(root: str, out: str, seed: int) -> None:
    L.seed_everything(seed, verbose=False)
    dm = build_datamodule(FIT_RECIPE, root, num_workers=0, seed=seed, limit_eval_images=VAL_TILES)
    probe = Probe()
    outcome = fit(FIT_RECIPE, dm, Path(out) / "run", model="lraspp_mobilenet_v3_large",
                  accelerator="cpu", devices=WORLD, strategy="ddp", progress=False,
                  val_check_interval=FIT_RECIPE.max_steps, extra_callbacks=[probe])
    assert outcome.trainer is not None and outcome.task.val_matrix is not None
    big = all_reduce_counts(torch.full((2,), BIG_COUNT, dtype=torch.int64))
    facts = {**probe.facts, "devices": outcome.devices, "steps": outcome.steps,
             "val_pixels": int(outcome.task.val_matrix.sum()), "big": big.tolist(),
             "norms_after": sorted({type(m).__name__ for m in outcome.task.modules()
                                    if isinstance(m, nn.modules.batchnorm._BatchNorm)})}
    rank = outcome.trainer.global_rank
    (Path(out) / f"fit_rank{rank}.json").write_text(json.dumps(facts))


def syncbn_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole batch, a weight per output value (the loss is their dot product), and the
    layer's affine weight and bias: the same on every rank and in the single-process reference."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SYNCBN_BATCH, SYNCBN_CHANNELS, 5, 5, generator=g) * 3 + 1
    loss_weights = torch.randn(x.shape, generator=g)
    return x, loss_weights, torch.rand(SYNCBN_CHANNELS, generator=g) + 0.5, torch.randn(
        SYNCBN_CHANNELS, generator=g)


def _syncbn(rank: int, out: str) -> None:
    _init(rank, Path(out))
    x, loss_weights, weight, bias = syncbn_inputs()
    half = slice(rank * SYNCBN_BATCH // WORLD, (rank + 1) * SYNCBN_BATCH // WORLD)
    layer = nn.BatchNorm2d(SYNCBN_CHANNELS).train()
    CPUSyncBatchNorm.convert(layer)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    local = x[half].clone().requires_grad_()
    output = layer(local)
    (output * loss_weights[half]).sum().backward()
    torch.save({"output": output.detach(), "input_grad": local.grad, "weight_grad": layer.weight.grad,
                "bias_grad": layer.bias.grad, "running_mean": layer.running_mean,
                "running_var": layer.running_var}, Path(out) / f"syncbn_rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    case, *args = sys.argv[1:]
    if case == "crops":
        torch.multiprocessing.spawn(_crops, args=(args[0], args[1], int(args[2])), nprocs=WORLD)
    elif case == "fit":
        _fit(args[0], args[1], int(args[2]))
    elif case == "syncbn":
        torch.multiprocessing.spawn(_syncbn, args=(args[0],), nprocs=WORLD)
    else:
        raise SystemExit(f"unknown case {case!r}")
