"""LoveDADataModule: batches, up-front validation, determinism, default root."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loveda_utils import paths
from loveda_utils.datamodule import LoveDADataModule
from loveda_utils.errors import ConfigError, DatasetNotFoundError, InvalidDataError


def test_training_batches_are_uint8_crops(tiny_tree: Path) -> None:
    dm = LoveDADataModule(tiny_tree, batch_size=2, crop_size=32, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (2, 3, 32, 32)
    assert batch["mask"].dtype == torch.uint8 and batch["mask"].shape == (2, 32, 32)
    assert set(torch.unique(batch["mask"]).tolist()) <= set(range(7)) | {255}
    assert set(batch["scene"]) <= {"Urban", "Rural"} and len(batch["name"]) == 2


def test_eval_batches_are_whole_tiles(tiny_tree: Path) -> None:
    dm = LoveDADataModule(tiny_tree, eval_split="val", eval_scenes="rural", num_workers=0,
                          limit_eval_images=1)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert len(batches) == 1 and batches[0]["image"].shape == (1, 3, 64, 64)
    assert batches[0]["scene"] == ["Rural"]
    assert dm.describe() == {"root": str(tiny_tree), "split": "Val", "scenes": ["rural"],
                             "n_images": 1, "synthetic": False}


def test_test_split_has_no_masks(tiny_tree: Path) -> None:
    dm = LoveDADataModule(tiny_tree, eval_split="test", num_workers=0)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert "mask" not in batch and batch["split"] == ["Test"]


def _first_batch(root: Path, seed: int, workers: int) -> dict:
    dm = LoveDADataModule(root, batch_size=2, crop_size=32, num_workers=workers, seed=seed)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_same_seed_same_batches_with_workers(tiny_tree: Path) -> None:
    a, b = _first_batch(tiny_tree, 7, 2), _first_batch(tiny_tree, 7, 2)
    assert a["name"] == b["name"]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    c = _first_batch(tiny_tree, 8, 2)
    assert not torch.equal(a["image"], c["image"])


def test_invalid_data_refused_up_front(tiny_tree: Path) -> None:
    (tiny_tree / "Train" / "Rural" / "masks_png" / "2.png").unlink()
    dm = LoveDADataModule(tiny_tree, crop_size=32, num_workers=2)
    with pytest.raises(InvalidDataError, match=r"Train/Rural/images_png/2\.png: image without mask") as info:
        dm.setup("fit")
    assert len(info.value.problems) == 1


def test_crop_larger_than_tile(tiny_tree: Path) -> None:
    dm = LoveDADataModule(tiny_tree, crop_size=512, num_workers=0)
    with pytest.raises(ConfigError, match=r"crop_size=512 is larger than the tiles \(64x64"):
        dm.setup("fit")


def test_root_resolution(tmp_path: Path, tiny_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetNotFoundError, match="data_root="):
        paths.resolve_data_root(tmp_path / "missing")
    monkeypatch.setenv("LOVEDA_ROOT", str(tmp_path / "missing"))
    with pytest.raises(DatasetNotFoundError, match=r"\$LOVEDA_ROOT"):
        paths.resolve_data_root(None)
    monkeypatch.setenv("LOVEDA_ROOT", str(tiny_tree))
    assert paths.resolve_data_root(None) == tiny_tree


def test_default_root_is_generated_mini_loveda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loveda_utils import synthetic

    target = tmp_path / "mini"
    monkeypatch.setattr(paths, "MINI_LOVEDA_DIR", target)
    # The default tree at test size: same generator, fewer and smaller tiles.
    monkeypatch.setattr(synthetic, "DEFAULT_TILES", 2)
    monkeypatch.setattr(synthetic, "DEFAULT_SIZE", 64)
    assert paths.resolve_data_root(None) == target and synthetic.is_synthetic(target)
    stamp = (target / synthetic.MARKER_NAME).stat().st_mtime_ns
    assert paths.resolve_data_root(None) == target  # reused, not regenerated
    assert (target / synthetic.MARKER_NAME).stat().st_mtime_ns == stamp
    dm = LoveDADataModule(None, num_workers=0, crop_size=32)
    assert dm.synthetic and dm.root == target
    # A tree from other settings (or an older generator) is replaced by the default one.
    monkeypatch.setattr(synthetic, "DEFAULT_SEED", 5)
    paths.ensure_mini_loveda()
    assert synthetic.read_marker(target)["seed"] == 5
