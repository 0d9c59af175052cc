"""A training batch the model cannot take is refused before the first step, with the reason
(issue #11), instead of torch's error from inside the forward pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_tree
from torch import nn
from torch.utils.data import DataLoader

from loveda_utils.errors import ConfigError
from loveda_utils.training.preflight import check_train_batches, smallest_batch
from loveda_utils.training.recipe import QUICK
from loveda_utils.training.trainer import build_datamodule, fit

#: Its ASPP pools each image to 1x1 before a BatchNorm: a batch of one fails in torch.
POOLED_BN_MODEL = "deeplabv3_mobilenet_v3_large"


@pytest.mark.parametrize(
    ("n", "batch", "drop_last", "world", "expected"),
    [(10, 4, False, 1, 2), (9, 4, False, 1, 1), (9, 4, True, 1, 4), (3, 4, False, 1, 3),
     (1, 4, False, 1, 1), (3, 4, True, 1, 0), (9, 4, False, 2, 1), (10, 8, True, 2, 0),
     (16, 4, True, 2, 4)],
)
def test_smallest_batch(n: int, batch: int, drop_last: bool, world: int, expected: int) -> None:
    assert smallest_batch(n, batch, drop_last, world) == expected


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def _loader(n: int, batch: int, drop_last: bool) -> DataLoader:
    return DataLoader(list(range(n)), batch_size=batch, drop_last=drop_last)


def test_batchnorm_and_a_batch_of_one_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match=r"batch_size=1: net has 1 BatchNorm layers, which need "
                       r"more than one sample per device .*; use batch_size >= 2"):
        check_train_batches(_bn_net(), _loader(8, 1, True), name="net")
    with pytest.raises(ConfigError, match=r"batch_size=4: each of the 2 devices gets 5 of the 9 "
                       r"training tiles, which leaves a last batch of one sample"):
        check_train_batches(_bn_net(), _loader(9, 4, False), world_size=2, name="net")
    check_train_batches(_bn_net(), _loader(9, 4, True))  # the last batch is dropped
    check_train_batches(nn.Conv2d(3, 4, 3), _loader(8, 1, True))  # no BatchNorm: one sample is fine


def test_a_device_without_a_batch_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"batch_size=8: each of the 2 devices gets 5 of the 10 "
                       r"training tiles, fewer than one batch, .*no training step would run; use "
                       r"batch_size <= 5"):
        check_train_batches(nn.Conv2d(3, 4, 3), _loader(10, 8, True), world_size=2)


@pytest.mark.slow
def test_fit_refuses_a_batch_of_one_before_training(mini_loveda: Path, tmp_path: Path) -> None:
    """Without the check, torch raised 'Expected more than 1 value per channel when training'
    from the ASPP pooling branch, after the run folder and logs were made."""
    recipe = QUICK.replace(max_steps=2, batch_size=1, crop_size=48)
    with pytest.raises(ConfigError, match=rf"batch_size=1: {POOLED_BN_MODEL} has \d+ BatchNorm"):
        fit(recipe, build_datamodule(recipe, mini_loveda, num_workers=0), tmp_path, model=POOLED_BN_MODEL,
            progress=False)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_fit_refuses_a_last_batch_of_one(tmp_path: Path) -> None:
    """One Train tile and batch_size 4: the loader keeps the incomplete batch, of one sample."""
    root = write_tree(tmp_path / "data", splits=("Train",), scenes=("Urban",), n=1, size=64)
    write_tree(root, splits=("Val",), n=1, size=64, seed=1)
    recipe = QUICK.replace(max_steps=2, batch_size=4, crop_size=48)
    datamodule = build_datamodule(recipe, root, num_workers=0, train_scenes="urban")
    with pytest.raises(ConfigError, match=r"batch_size=4: the training split has 1 tiles, which "
                       r"leaves a last batch of one sample"):
        fit(recipe, datamodule, tmp_path / "run", model=POOLED_BN_MODEL, progress=False)


def test_the_pooled_batchnorm_really_fails_at_one_sample() -> None:
    """What the check prevents: torch's own error, from inside the model."""
    from loveda_utils.models import build_model

    model = build_model(POOLED_BN_MODEL, pretrained="none").train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        model.forward_train(torch.zeros(1, 3, 48, 48, dtype=torch.uint8))
