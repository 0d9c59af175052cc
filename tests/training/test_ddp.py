"""Multi-process training (issue #12, GPU and multi-GPU bugs), run for real: two CPU processes
talking gloo, through ``ddp_cases.py``.

- Ranks draw different crops (they used to draw the same ones: every rank seeded the loader
  alike, and our ``worker_init_fn`` kept Lightning from seeding workers per rank), and the same
  seed draws the same crops again.
- Under Lightning DDP, BatchNorm is synchronised (SyncBN, as MMSeg's LoveDA configs) and each
  device gets the recipe's per-device batch.
- DDP validation counts every tile once (a padded DistributedSampler counted some twice), and
  the confusion matrix is summed in int64 (float32 loses pixels above 2**24).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_tree
from torch import nn

from loveda_utils.data.classes import IGNORE_INDEX
from loveda_utils.data.datamodule import LoveDADataModule

sys.path.insert(0, str(Path(__file__).parent))
import ddp_cases  # noqa: E402

pytestmark = pytest.mark.slow

CASES = Path(__file__).with_name("ddp_cases.py")


def _identical_tiles(root: Path) -> Path:
    """A LoveDA tree whose training tiles are all the same image: two crops differ only when
    their augmentations (resize, crop window, flip, colours) were drawn differently."""
    write_tree(root, n=2, size=64)
    first = root / "Train" / "Urban"
    for scene in ("Urban", "Rural"):
        for kind in ("images_png", "masks_png"):
            for path in (root / "Train" / scene / kind).glob("*.png"):
                if path != first / kind / "0.png":
                    shutil.copyfile(first / kind / "0.png", path)
    return root


def _run(*args: str | Path, timeout: int = 900) -> None:
    done = subprocess.run([sys.executable, str(CASES), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def _crops(root: Path, out: Path, seed: int) -> dict[tuple[int, int], dict]:
    out.mkdir()
    _run("crops", root, out, seed)
    return {(w, r): torch.load(out / f"crops_w{w}_rank{r}.pt")
            for w in ddp_cases.CROP_WORKERS for r in range(ddp_cases.WORLD)}


def test_ranks_draw_different_crops_the_same_again_for_the_same_seed(tmp_path: Path) -> None:
    root = _identical_tiles(tmp_path / "loveda")
    first = _crops(root, tmp_path / "a", seed=3)
    again = _crops(root, tmp_path / "b", seed=3)
    for workers in ddp_cases.CROP_WORKERS:
        rank0, rank1 = first[workers, 0], first[workers, 1]
        assert not set(rank0["name"]) & set(rank1["name"]), f"{workers} workers: shards overlap"
        assert not torch.equal(rank0["image"], rank1["image"]), f"{workers} workers: same crops"
        for rank in range(ddp_cases.WORLD):
            assert torch.equal(first[workers, rank]["image"], again[workers, rank]["image"])
            assert first[workers, rank]["name"] == again[workers, rank]["name"]


def _single_process_pixels(root: Path) -> int:
    dm = LoveDADataModule(root, num_workers=0, limit_eval_images=ddp_cases.VAL_TILES)
    return sum(int((batch["mask"] != IGNORE_INDEX).sum()) for batch in dm.val_dataloader())


def test_lightning_ddp_syncs_batchnorm_and_counts_each_val_tile_once(tmp_path: Path) -> None:
    root = _identical_tiles(tmp_path / "loveda")
    (tmp_path / "out").mkdir()
    _run("fit", root, tmp_path / "out", 0)
    ranks = [json.loads((tmp_path / "out" / f"fit_rank{r}.json").read_text())
             for r in range(ddp_cases.WORLD)]
    pixels = _single_process_pixels(root)
    for facts in ranks:
        assert facts["steps"] == ddp_cases.FIT_RECIPE.max_steps and facts["devices"] == 2
        # The recipe's batch is each device's: two processes train twice as many images a step.
        assert facts["batch"] == ddp_cases.FIT_RECIPE.batch_size
        assert facts["norms"] == ["CPUSyncBatchNorm"], "BatchNorm not synchronised"
        assert facts["norms_after"] == ["BatchNorm2d"], "SyncBN left in the trained model"
        # Every one of the 3 tiles once: no padded duplicate, whichever rank read it.
        assert facts["val_pixels"] == pixels
        assert facts["big"] == [2 * ddp_cases.BIG_COUNT] * 2  # exact in int64
    assert ranks[0]["first_image"] != ranks[1]["first_image"], "ranks trained on the same crops"


def test_cpu_sync_batchnorm_is_batchnorm_over_the_global_batch(tmp_path: Path) -> None:
    _run("syncbn", tmp_path)
    x, loss_weights, weight, bias = ddp_cases.syncbn_inputs()
    reference = nn.BatchNorm2d(ddp_cases.SYNCBN_CHANNELS).train()
    with torch.no_grad():
        reference.weight.copy_(weight)
        reference.bias.copy_(bias)
    x = x.clone().requires_grad_()
    output = reference(x)
    (output * loss_weights).sum().backward()
    ranks = [torch.load(tmp_path / f"syncbn_rank{r}.pt") for r in range(ddp_cases.WORLD)]
    close = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(torch.cat([r["output"] for r in ranks]), output.detach(), **close)
    torch.testing.assert_close(torch.cat([r["input_grad"] for r in ranks]), x.grad, **close)
    # Parameter gradients are each rank's share (DDP sums them over the ranks).
    torch.testing.assert_close(sum(r["weight_grad"] for r in ranks), reference.weight.grad, **close)
    torch.testing.assert_close(sum(r["bias_grad"] for r in ranks), reference.bias.grad, **close)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], reference.running_mean, **close)
        torch.testing.assert_close(r["running_var"], reference.running_var, **close)
