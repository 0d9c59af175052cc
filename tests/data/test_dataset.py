"""The data layer: label mapping, the dataset over real PNGs, torchgeo compatibility, check-data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_pair, write_tree
from PIL import Image

from loveda_utils.cli import main as cli
from loveda_utils.data import classes
from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.data.validation import check_tree, class_frequencies
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


def test_real_sample_loads(real_sample: Path) -> None:
    ds = LoveDASegmentation(real_sample, "train", "rural")
    assert len(ds) == 16
    sample = ds[0]
    assert sample["image"].shape == (3, 1024, 1024) and sample["mask"].shape == (1024, 1024)
    values = set(torch.unique(sample["mask"]).tolist())
    assert values <= set(range(7)) | {255} and len(values) > 1


# -- check-data --------------------------------------------------------------------------------


def test_check_data_accepts_a_good_tree(tiny_tree: Path, capsys: pytest.CaptureFixture) -> None:
    report = check_tree(tiny_tree)
    assert report.ok, report.format()
    assert [(s.split, s.scene, s.n_images) for s in report.summaries] == [
        ("Train", "Urban", 2), ("Train", "Rural", 2), ("Val", "Urban", 2),
        ("Val", "Rural", 2), ("Test", "Urban", 2), ("Test", "Rural", 2)]
    assert cli(["check-data", str(tiny_tree)]) == 0
    out = capsys.readouterr().out
    assert "OK: no problems found." in out and "Pixel shares" in out
    freq = class_frequencies(report)
    train_urban = freq[(freq.split == "Train") & (freq.scene == "Urban")]
    assert train_urban.share.sum() == pytest.approx(1.0)
    assert train_urban.pixels.sum() == 2 * 64 * 64


def test_check_data_accepts_real_tiles(real_sample: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["check-data", str(real_sample), "--splits", "train", "--scenes", "rural"]) == 0
    assert "Train  Rural       16      16  1024x1024" in capsys.readouterr().out


def _damage(root: Path) -> dict[str, Path]:
    """Apply every kind of damage check-data promises to catch; return the file each one names."""
    rng = np.random.default_rng(1)
    urban, rural = root / "Train" / "Urban", root / "Train" / "Rural"
    damage = {}
    (urban / "masks_png" / "0.png").unlink()
    damage["image without mask"] = urban / "images_png" / "0.png"
    (urban / "images_png" / "1.png").unlink()
    damage["mask without image"] = urban / "masks_png" / "1.png"
    garbage = rural / "images_png" / "2.png"
    garbage.write_bytes(b"this is not a png at all")
    damage["unreadable"] = garbage
    truncated = rural / "masks_png" / "3.png"
    big = np.kron(rng.integers(1, 8, (64, 64), dtype=np.uint8), np.ones((1, 1), np.uint8))
    Image.fromarray(big).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    damage["truncated"] = truncated
    val = root / "Val" / "Urban"
    write_pair(val, "6.png", np.ones((64, 64), np.uint8))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(val / "images_png" / "6.png")
    damage["not 3-channel"] = val / "images_png" / "6.png"
    write_pair(val, "7.png", np.ones((64, 64), np.uint8))
    Image.fromarray(np.ones((32, 64), np.uint8)).save(val / "masks_png" / "7.png")
    damage["size"] = val / "images_png" / "7.png"
    out_of_range = np.ones((64, 64), np.uint8)
    out_of_range[0, :3] = [8, 9, 200]
    Image.fromarray(out_of_range).save(root / "Val" / "Rural" / "masks_png" / "8.png")
    damage["values"] = root / "Val" / "Rural" / "masks_png" / "8.png"
    shutil.rmtree(root / "Test" / "Rural")
    damage["scene folder"] = root / "Test" / "Rural"
    return damage


EXPECTED = {
    "image without mask": "image without mask",
    "mask without image": "mask without image",
    "unreadable": "unreadable or truncated PNG",
    "truncated": "unreadable or truncated PNG",
    "not 3-channel": "not 3-channel",
    "size": "is 64x64 but its mask",
    "values": "mask values outside 0..7: 8, 9, 200",
    "scene folder": "Test/Rural folder missing",
}


def test_check_data_lists_each_problem(tiny_tree: Path, capsys: pytest.CaptureFixture) -> None:
    write_tree(tiny_tree, splits=("Val",), n=6)  # more tiles to damage (ids 0..11 overwrite)
    damage = _damage(tiny_tree)
    report = check_tree(tiny_tree)
    text = report.format()
    for kind, path in damage.items():
        lines = [str(p) for p in report.problems if p.path == str(path)]
        assert any(EXPECTED[kind] in line for line in lines), f"{kind}: {lines}\n{text}"
    assert cli(["check-data", str(tiny_tree)]) == 1
    out = capsys.readouterr().out
    assert f"FAILED: {len(report.problems)} problem(s)." in out
    assert str(damage["truncated"]) in out


def test_check_data_missing_root_and_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["check-data", str(tmp_path / "absent")]) == 2
    assert "LoveDA root not found" in capsys.readouterr().err
    write_tree(tmp_path / "t", splits=("Train",))
    report = check_tree(tmp_path / "t")
    assert {p.message for p in report.problems} == {"split folder Val/ missing", "split folder Test/ missing"}


def test_quick_check_skips_decoding(tiny_tree: Path) -> None:
    damaged = tiny_tree / "Train" / "Urban" / "masks_png" / "0.png"
    values = np.full((64, 64), 9, np.uint8)
    Image.fromarray(values).save(damaged)
    assert check_tree(tiny_tree, level="quick").ok
    assert not check_tree(tiny_tree, level="full").ok
