"""check-data: the per-file checks, files the loader skips, and the command line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_pair, write_tree
from PIL import Image

from loveda_utils.cli import main as cli
from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.data.validation import check_tree, class_frequencies
from loveda_utils.errors import ConfigError


def test_check_data_accepts_a_good_tree(tiny_tree: Path, capsys: pytest.CaptureFixture) -> None:
    report = check_tree(tiny_tree, release=False)
    assert report.ok, report.format()
    assert [(s.split, s.scene, s.n_images) for s in report.summaries] == [
        ("Train", "Urban", 2), ("Train", "Rural", 2), ("Val", "Urban", 2),
        ("Val", "Rural", 2), ("Test", "Urban", 2), ("Test", "Rural", 2)]
    assert cli(["check-data", str(tiny_tree), "--no-manifest"]) == 0
    out = capsys.readouterr().out
    assert "OK: no problems found." in out and "Pixel shares" in out and "Release:" not in out
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
    report = check_tree(tiny_tree, release=False)
    text = report.format()
    for kind, path in damage.items():
        lines = [str(p) for p in report.problems if p.path == str(path)]
        assert any(EXPECTED[kind] in line for line in lines), f"{kind}: {lines}\n{text}"
    assert cli(["check-data", str(tiny_tree), "--no-manifest"]) == 1
    out = capsys.readouterr().out
    assert f"FAILED: {len(report.problems)} problem(s)." in out
    assert str(damage["truncated"]) in out


def test_check_data_missing_root_and_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["check-data", str(tmp_path / "absent")]) == 2
    assert "LoveDA root not found" in capsys.readouterr().err
    write_tree(tmp_path / "t", splits=("Train",))
    report = check_tree(tmp_path / "t", release=False)
    assert {p.message for p in report.problems} == {"split folder Val/ missing", "split folder Test/ missing"}


def test_quick_check_decodes_masks_not_images(tiny_tree: Path) -> None:
    truncated = tiny_tree / "Train" / "Urban" / "images_png" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:-100])  # header intact, pixels cut short
    assert check_tree(tiny_tree, level="quick", release=False).ok
    assert not check_tree(tiny_tree, level="full", release=False).ok
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(tiny_tree / "Val" / "Rural" / "masks_png" / "6.png")
    quick = check_tree(tiny_tree, level="quick", release=False)
    assert [str(p) for p in quick.problems] == [
        f"{tiny_tree}/Val/Rural/masks_png/6.png: mask values outside 0..7: 9"]


def test_16_bit_masks_are_refused(tiny_tree: Path) -> None:
    """Even with every value in 0..7: LoveDA masks are 8-bit, and a loader may truncate wider ones."""
    for name, values in (("2.png", [3, 257]), ("3.png", [3, 5])):
        path = tiny_tree / "Train" / "Rural" / "masks_png" / name
        wide = np.asarray(Image.open(path)).astype(np.uint16)
        wide[0, :2] = values
        Image.fromarray(wide).save(path)
    for level in ("quick", "full"):
        report = check_tree(tiny_tree, ["train"], level=level, release=False)
        assert sorted(Path(p.path).name for p in report.problems) == ["2.png", "3.png"]
        assert all("mask is 16-bit" in p.message for p in report.problems)


# -- files the loader skips --------------------------------------------------------------------


def test_skipped_tiles_are_reported_and_counts_match_the_loader(tiny_tree: Path) -> None:
    urban = tiny_tree / "Train" / "Urban"
    write_pair(urban, "20.PNG", np.ones((64, 64), np.uint8))  # upper case: torchgeo's glob skips it
    (urban / "images_png" / ".21.png").write_bytes((urban / "images_png" / "0.png").read_bytes())
    (urban / "images_png" / "22.jpg").write_bytes(b"a JPEG would be skipped too")
    (urban / "images_png" / ".DS_Store").write_bytes(b"\0")
    report = check_tree(tiny_tree, ["train"], "urban", release=False)
    skipped = {Path(p.path).relative_to(urban).as_posix() for p in report.problems}
    assert skipped == {"images_png/20.PNG", "masks_png/20.PNG", "images_png/.21.png",
                       "images_png/22.jpg"}, report.format()
    assert all("skipped by the loader" in p.message for p in report.problems)
    assert report.ignored == [str(urban / "images_png" / ".DS_Store")]
    dataset = LoveDASegmentation(tiny_tree, "train", "urban")
    summary = report.summaries[0]
    assert summary.n_images == summary.n_masks == len(dataset) == 2


def test_other_files_are_listed_not_failed(tiny_tree: Path, capsys: pytest.CaptureFixture) -> None:
    (tiny_tree / "Val" / "Rural" / "masks_png" / "Thumbs.db").write_bytes(b"\0")
    assert cli(["check-data", str(tiny_tree), "--no-manifest", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "1 file(s) the loader ignores (not tiles):" in out and "Thumbs.db" in out


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_workers_below_one_are_refused(tiny_tree: Path, workers) -> None:
    """``workers=0`` used to check on one thread, as if 1 had been asked for."""
    with pytest.raises(ConfigError, match=rf"workers={workers!r}: must be a positive integer \(None: the CPU count\)"):
        check_tree(tiny_tree, workers=workers)


# -- command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "valid"), [("--splits", "Train, Val, Test"),
                                             ("--scenes", "Urban, Rural, both")])
def test_bad_split_or_scene_is_one_line(tiny_tree: Path, capsys: pytest.CaptureFixture,
                                        flag: str, valid: str) -> None:
    assert cli(["check-data", str(tiny_tree), flag, "train,foo" if flag == "--splits" else "foo"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: {flag} 'foo': use {valid} (comma-separated, any case)\n"


def test_split_and_scene_names_any_case(tiny_tree: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["check-data", str(tiny_tree), "--no-manifest", "--splits", "VAL,train",
                "--scenes", "both"]) == 0
    out = capsys.readouterr().out
    assert "Val    Urban" in out and "Train  Rural" in out and "Test" not in out
