"""The data layer: label mapping, the dataset over real PNGs, torchgeo compatibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tree
from PIL import Image

from loveda_utils.data import classes
from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.errors import DatasetNotFoundError, InvalidDataError

# -- labels ------------------------------------------------------------------------------------


def test_label_mapping_covers_every_byte() -> None:
    raw = np.arange(256, dtype=np.uint8)
    train = classes.raw_to_train(raw)
    assert train[0] == classes.IGNORE_INDEX
    assert list(train[1:8]) == list(range(7))
    assert (train[8:] == classes.IGNORE_INDEX).all()
    torch_train = classes.raw_to_train(torch.from_numpy(raw))
    assert torch.equal(torch_train, torch.from_numpy(train))
    assert list(classes.train_to_raw(train[:8])) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert torch.equal(classes.train_to_raw(torch_train[:8]), torch.arange(8, dtype=torch.uint8))
    # A mask holding only valid raw values takes the subtraction path: the same labels.
    valid = np.random.default_rng(0).integers(0, 8, (33, 47), dtype=np.uint8)
    np.testing.assert_array_equal(classes.raw_to_train(valid), np.take(train, valid))
    assert classes.raw_to_train(valid).dtype == np.uint8
    assert classes.raw_to_train(np.zeros((0, 4), np.uint8)).shape == (0, 4)


def test_one_place_for_names_and_palette() -> None:
    assert len(classes.CLASS_NAMES) == len(classes.PALETTE) == classes.NUM_CLASSES == 7
    assert classes.CLASS_NAMES[0] == "background" and classes.CLASS_NAMES[-1] == "agriculture"
    painted = classes.colorize(np.array([[0, 6, 255]]))
    assert painted[0, 0].tolist() == list(classes.PALETTE[0])
    assert painted[0, 1].tolist() == list(classes.PALETTE[6])
    assert painted[0, 2].tolist() == list(classes.IGNORE_COLOR)


def test_wide_masks_are_never_wrapped_into_classes() -> None:
    """A 16-bit value such as 257 is invalid: ignored, never 257 % 256 = 1 (background)."""
    raw = np.array([[0, 1, 7, 8, 257, 263, 65535]], dtype=np.uint16)
    expected = [255, 0, 6, 255, 255, 255, 255]
    assert classes.raw_to_train(raw).tolist() == [expected]
    assert classes.raw_to_train(raw.astype(np.int32)).tolist() == [expected]
    assert classes.raw_to_train(torch.from_numpy(raw.astype(np.int64))).tolist() == [expected]
    assert classes.raw_to_train(raw).dtype == np.uint8


@pytest.mark.parametrize("bad", ["training", "", "val2"])
def test_bad_split_name(bad: str) -> None:
    with pytest.raises(ValueError, match="split="):
        classes.normalize_split(bad)


def test_scene_names() -> None:
    assert classes.normalize_scenes("both") == ("Urban", "Rural")
    assert classes.normalize_scenes(["rural", "RURAL"]) == ("Rural",)
    with pytest.raises(ValueError, match="suburban"):
        classes.normalize_scenes("suburban")


# -- dataset -----------------------------------------------------------------------------------


def test_dataset_reads_layout_and_maps_labels(tiny_tree: Path) -> None:
    ds = LoveDASegmentation(tiny_tree, split="val", scenes="both")
    assert len(ds) == 4
    sample = ds[0]
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 64, 64)
    assert sample["mask"].dtype == torch.uint8 and sample["mask"].shape == (64, 64)
    assert sample["split"] == "Val" and sample["scene"] in ("Urban", "Rural")
    raw = np.asarray(Image.open(tiny_tree / "Val" / sample["scene"] / "masks_png" / sample["name"]))
    expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    assert np.array_equal(sample["mask"].numpy(), expected)
    rgb = np.asarray(Image.open(tiny_tree / "Val" / sample["scene"] / "images_png" / sample["name"]))
    assert np.array_equal(sample["image"].permute(1, 2, 0).numpy(), rgb)


def test_dataset_scenes_and_test_split(tiny_tree: Path) -> None:
    assert {LoveDASegmentation(tiny_tree, "train", "rural")[i]["scene"] for i in range(2)} == {"Rural"}
    test = LoveDASegmentation(tiny_tree, split="test", scenes="both")
    assert len(test) == 4 and "mask" not in test[0]


def test_dataset_agrees_with_torchgeo(tiny_tree: Path) -> None:
    from torchgeo.datasets import LoveDA

    ours = LoveDASegmentation(tiny_tree, "train", "both")
    theirs = LoveDA(root=str(tiny_tree), split="train", scene=["urban", "rural"], download=False)
    assert len(ours) == len(theirs)
    for i in range(len(ours)):
        a, b = ours[i], theirs[i]
        assert torch.equal(a["image"].float(), b["image"])
        assert torch.equal(a["mask"], classes.raw_to_train(b["mask"]))


def test_dataset_missing_root_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="Val"):
        LoveDASegmentation(tmp_path / "nowhere", split="val")


def test_dataset_bad_png_names_file(tiny_tree: Path) -> None:
    bad = tiny_tree / "Train" / "Urban" / "images_png" / "0.png"
    bad.write_bytes(bad.read_bytes()[:60])
    ds = LoveDASegmentation(tiny_tree, "train", "urban")
    with pytest.raises(InvalidDataError, match=r"0\.png.*truncated"):
        ds[0]


def test_a_16_bit_mask_loads_without_wrapping(tiny_tree: Path) -> None:
    """Loaded without the up-front check: 257 becomes ignore (255), not background (0)."""
    path = tiny_tree / "Train" / "Urban" / "masks_png" / "0.png"
    wide = np.asarray(Image.open(path)).astype(np.uint16)
    wide[0, :2] = [257, 3]
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit PNG on disk
    ds = LoveDASegmentation(tiny_tree, "train", "urban")
    index = ds.names().index("0.png")
    mask = ds[index]["mask"]
    assert mask[0, 0].item() == classes.IGNORE_INDEX and mask[0, 1].item() == 2


def test_root_path_containing_images_png(tmp_path: Path) -> None:
    """Masks are found beside each image, whatever the root's own path holds."""
    root = write_tree(tmp_path / "images_png" / "loveda", splits=("Train",), scenes=("Rural",))
    ds = LoveDASegmentation(root, "train", "rural")
    assert [Path(f["mask"]) for f in ds.files] == [
        root / "Train" / "Rural" / "masks_png" / name for name in ds.names()]
    sample = ds[0]
    raw = np.asarray(Image.open(root / "Train" / "Rural" / "masks_png" / sample["name"]))
    assert np.array_equal(sample["mask"].numpy(), classes.raw_to_train(raw))


def test_real_sample_loads(real_sample: Path) -> None:
    ds = LoveDASegmentation(real_sample, "train", "rural")
    assert len(ds) == 16
    sample = ds[0]
    assert sample["image"].shape == (3, 1024, 1024) and sample["mask"].shape == (1024, 1024)
    values = set(torch.unique(sample["mask"]).tolist())
    assert values <= set(range(7)) | {255} and len(values) > 1
