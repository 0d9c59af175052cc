"""Tests of loveda_utils.results.uncertainty: the record's interval fields and the run folder's
per-tile file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tree
from pixel_net import PixelNet
from torch.utils.data import DataLoader

from loveda_utils.data.datamodule import collate
from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.evaluation.bootstrap import BootstrapSettings, bootstrap_miou_ci
from loveda_utils.evaluation.loop import EvaluationResult, evaluate
from loveda_utils.evaluation.per_tile import PER_TILE_FILE, load_per_tile
from loveda_utils.files import json_ready
from loveda_utils.results.uncertainty import SCENE_KEYS, save_run_tiles, uncertainty_fields


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[EvaluationResult, EvaluationResult]:
    root = write_tree(tmp_path_factory.mktemp("unc") / "loveda", splits=("Val",), n=4)
    loader = DataLoader(LoveDASegmentation(root, "val", "both"), batch_size=3, collate_fn=collate)
    model = PixelNet()
    return evaluate(model, loader), evaluate(model, loader, ms_flip=True, scales=(0.75, 1.0))


def test_fields_state_intervals_and_settings(results) -> None:
    single, ms = results
    fields = uncertainty_fields(single, ms, BootstrapSettings(300, 3))
    assert set(fields) == {"miou_ci", "miou_ms_flip_ci", "per_scene_miou_ci", "bootstrap"}
    assert fields["miou_ci"] == list(bootstrap_miou_ci(single.tiles.confusion, BootstrapSettings(300, 3)))
    assert fields["miou_ms_flip_ci"] == list(bootstrap_miou_ci(ms.tiles.confusion, BootstrapSettings(300, 3)))
    assert list(fields["per_scene_miou_ci"]) == list(SCENE_KEYS) == ["urban", "rural"]
    for scene, ci in fields["per_scene_miou_ci"].items():
        assert ci == list(bootstrap_miou_ci(single.tiles.scene(scene).confusion, BootstrapSettings(300, 3)))
    assert fields["bootstrap"] == {"resamples": 300, "seed": 3, "level": 0.95, "unit": "tile",
                                   "interval": "percentile"}
    assert json.loads(json.dumps(json_ready(fields))) == fields  # plain JSON values

    default = uncertainty_fields(single)
    assert default["miou_ms_flip_ci"] is None
    assert default["bootstrap"]["resamples"] == 2000 and default["bootstrap"]["seed"] == 0
    low, high = default["miou_ci"]
    assert 0 <= low <= high <= 1


def test_a_scene_not_evaluated_has_no_interval(results) -> None:
    single, _ = results
    urban = single.tiles.scene("urban")
    only_urban = dataclasses.replace(
        single, tiles=urban, confusion=torch.from_numpy(urban.total()),
        per_scene_confusion={"urban": torch.from_numpy(urban.total())},
    )
    fields = uncertainty_fields(only_urban, settings=BootstrapSettings(100))
    assert fields["per_scene_miou_ci"]["rural"] is None
    assert fields["per_scene_miou_ci"]["urban"] == fields["miou_ci"]


def test_results_whose_tiles_do_not_add_up_are_refused(results, tmp_path: Path) -> None:
    single, _ = results
    broken = dataclasses.replace(single, tiles=single.tiles.select([0, 1]))
    with pytest.raises(ValueError, match="tiles do not sum to single.confusion"):
        uncertainty_fields(broken)
    with pytest.raises(ValueError, match="tiles do not sum"):
        save_run_tiles(tmp_path, broken)
    assert not (tmp_path / PER_TILE_FILE).exists()


def test_run_folder_file(results, tmp_path: Path) -> None:
    single, ms = results
    path = save_run_tiles(tmp_path, single, ms)
    assert path == tmp_path / PER_TILE_FILE
    saved = load_per_tile(path)
    assert saved.single.names == single.tiles.names
    assert np.array_equal(saved.single.confusion, single.tiles.confusion)
    assert saved.ms_flip is not None
    assert np.array_equal(saved.ms_flip.total(), ms.confusion.numpy())
    save_run_tiles(tmp_path, single)  # a rerun replaces the file whole
    assert load_per_tile(path).ms_flip is None
