"""check-data against the LoveDA release manifest, and the release's statistics from it."""

from __future__ import annotations

import hashlib
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loveda_utils.cli import main as cli
from loveda_utils.data import manifest
from loveda_utils.data.classes import MAX_RAW_VALUE
from loveda_utils.data.pngio import read_png
from loveda_utils.data.validation import check_tree, class_frequencies

REPO = Path(__file__).resolve().parents[2]
TILE_PIXELS = 1024 * 1024


def _copy_tile(real_sample: Path, name: str, root: Path, split: str = "Train", scene: str = "Rural") -> Path:
    """One real tile (image and mask) copied under ``root/split/scene``; returns the scene folder."""
    source = real_sample / "Train" / "Rural"
    target = root / split / scene
    for folder in ("images_png", "masks_png"):
        (target / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / folder / name, target / folder / name)
    return target


# -- the manifest itself -----------------------------------------------------------------------


def test_manifest_holds_the_release() -> None:
    tiles = manifest.release_tiles()
    assert len(tiles) == 5987
    per_scene = {(s, c): len(manifest.release_ids(s, c)) for s in ("Train", "Val", "Test")
                 for c in ("Urban", "Rural")}
    assert per_scene == {("Train", "Urban"): 1156, ("Train", "Rural"): 1366, ("Val", "Urban"): 677,
                         ("Val", "Rural"): 992, ("Test", "Urban"): 820, ("Test", "Rural"): 976}
    labelled = [t for t in tiles.values() if t.split != "Test"]
    assert all(t.mask_counts is not None and sum(t.mask_counts) == t.width * t.height for t in labelled)
    assert all(t.mask_counts is None for t in tiles.values() if t.split == "Test")
    assert sum(t.image_md5 is None for t in tiles.values()) == 605
    assert manifest.tile_id("1366.png") == 1366 and manifest.tile_id("01.png") is None
    assert manifest.tile_id("a.png") is None and manifest.release_row("99999.png") is None


def test_manifest_is_package_data() -> None:
    """An installed package carries the file: pyproject's package-data names it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["loveda_utils.data"]
    data_dir = REPO / "loveda_utils" / "data"
    shipped = {p.relative_to(data_dir).as_posix() for pattern in patterns for p in data_dir.glob(pattern)}
    assert "/".join(manifest.MANIFEST_RESOURCE) in shipped


# -- real tiles against their rows -------------------------------------------------------------


def test_real_tiles_match_the_release(real_sample: Path, capsys: pytest.CaptureFixture) -> None:
    for level in ("quick", "full"):
        report = check_tree(real_sample, ["train"], "rural", level=level)
        assert report.ok, report.format()
        assert report.release is not None and report.release.present == 16
    assert cli(["check-data", str(real_sample), "--splits", "train", "--scenes", "rural"]) == 0
    out = capsys.readouterr().out
    assert "Release: 16 of 5,987 tiles (0.3%), Train/Rural 16 of 1,366" in out
    assert "OK: no problems found." in out


def test_one_changed_mask_pixel_is_named(real_sample: Path, tmp_path: Path) -> None:
    scene = _copy_tile(real_sample, "5.png", tmp_path)
    path = scene / "masks_png" / "5.png"
    mask = read_png(path, "mask")
    old = int(mask[100, 200])
    new = old % MAX_RAW_VALUE + 1  # another valid class: the PNG stays a well-formed LoveDA mask
    mask[100, 200] = new
    Image.fromarray(mask).save(path)
    assert check_tree(tmp_path, ["train"], "rural", level="quick").ok  # well-formed, placed right
    report = check_tree(tmp_path, ["train"], "rural")
    assert [p.path for p in report.problems] == [str(path)]
    message = report.problems[0].message
    assert message.startswith("mask class counts differ from the release: raw value ")
    row = manifest.release_row("5.png")
    assert f"{old} " in message and f"{row.mask_counts[old] - 1:,} here, {row.mask_counts[old]:,}" in message
    assert f"{row.mask_counts[new] + 1:,} here, {row.mask_counts[new]:,} in the release" in message


def test_one_changed_image_pixel_is_named(real_sample: Path, tmp_path: Path) -> None:
    scene = _copy_tile(real_sample, "7.png", tmp_path)
    path = scene / "images_png" / "7.png"
    image = read_png(path, "image")
    image[0, 0] = 255 - image[0, 0]
    Image.fromarray(image).save(path)
    report = check_tree(tmp_path, ["train"], "rural")
    assert [p.path for p in report.problems] == [str(path)]
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    assert report.problems[0].message == (
        f"image MD5 {digest} differs from the release's {manifest.release_row('7.png').image_md5} "
        "(the file was altered or re-encoded)")


@pytest.mark.parametrize(("split", "scene"), [("Val", "Urban"), ("Train", "Urban"), ("Test", "Rural")])
def test_tile_in_the_wrong_place_is_named(real_sample: Path, tmp_path: Path, split: str, scene: str) -> None:
    _copy_tile(real_sample, "3.png", tmp_path, split, scene)
    report = check_tree(tmp_path, [split], scene)
    expected = f"tile 3.png belongs in Train/Rural in the release, not {split}/{scene}: move it there"
    assert [str(p) for p in report.problems] == [
        f"{tmp_path / split / scene / 'images_png' / '3.png'}: {expected}"]
    assert report.release.present == 0


def test_complete_lists_the_missing_tiles(real_sample: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["check-data", str(real_sample), "--splits", "train", "--scenes", "rural", "--complete"]
    assert cli(args) == 1
    out = capsys.readouterr().out
    assert f"{real_sample / 'Train' / 'Rural'}: 1,350 of 1,366 release tiles missing (ids 16-1365)" in out
    assert cli([*args[:-1], "--quick", "--complete"]) == 1  # the quick mode counts the same way


def test_image_means_stand_in_for_a_missing_md5() -> None:
    row = next(t for t in manifest.release_tiles().values() if t.image_md5 is None)
    name = f"{row.id}.png"
    image = f"{row.split}/{row.scene}/images_png/{name}"
    same = [m + 0.5 * manifest.MEAN_TOLERANCE for m in row.mean_rgb]
    assert manifest.compare_tile(row, row.split, row.scene, image, None, image_mean=same) == []
    off = [row.mean_rgb[0] + 0.01, *row.mean_rgb[1:]]
    [problem] = manifest.compare_tile(row, row.split, row.scene, image, None, image_mean=off)
    assert problem.path == image and "channel means" in problem.message
    assert "no release MD5" in problem.message


# -- trees that are not the release ------------------------------------------------------------


def test_synthetic_tree_is_recognised_not_compared(mini_loveda: Path, capsys: pytest.CaptureFixture) -> None:
    report = check_tree(mini_loveda)
    assert report.ok, report.format()
    assert report.release is not None and report.release.synthetic
    assert cli(["check-data", str(mini_loveda), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "synthetic mini-LoveDA" in out and "not compared with the LoveDA release" in out
    incomplete = check_tree(mini_loveda, level="quick", complete=True)
    assert [p.message for p in incomplete.problems] == [
        "--complete: this is the synthetic mini-LoveDA, not the LoveDA release"]


def test_other_data_in_the_layout_differs_from_the_release(tiny_tree: Path) -> None:
    for folder in ("images_png", "masks_png"):
        (tiny_tree / "Val" / "Urban" / folder / "4.png").rename(tiny_tree / "Val" / "Urban" / folder / "tile_a.png")
    report = check_tree(tiny_tree, level="quick")
    messages = [p.message for p in report.problems]
    assert any(m.startswith("not a LoveDA release tile: the release has no tile tile_a.png") for m in messages)
    assert "image is 64x64, the release tile is 1024x1024" in messages
    assert any(m.startswith("tile 5.png belongs in Train/Rural in the release, not Val/Urban") for m in messages)
    assert "None of the 12 tiles is as released" in report.format()
    assert check_tree(tiny_tree, level="quick", release=False).ok


# -- the release's statistics ------------------------------------------------------------------


def test_release_class_frequencies() -> None:
    freq = manifest.release_class_frequencies()
    assert list(freq.columns) == ["split", "scene", "class", "pixels", "share", "labelled_share"]
    sizes = freq.groupby(["split", "scene"], sort=False)["pixels"].sum()
    for (split, scene), pixels in sizes.items():
        assert pixels == len(manifest.release_ids(split, scene)) * TILE_PIXELS
    labelled = freq[freq["class"] != "no-data"].groupby(["split", "scene"])["labelled_share"].sum()
    assert np.allclose(labelled.to_numpy(), 1.0)


def test_release_domain_statistics_pool_the_pixels(real_sample: Path) -> None:
    """Pooled from per-image means and stds, the statistics equal those of the pixels themselves."""
    frame = manifest.release_frame()
    stats = manifest.release_domain_statistics(frame[frame.id < 16])
    pixels = np.concatenate([read_png(p, "image").reshape(-1, 3).astype(np.float64)
                             for p in sorted((real_sample / "Train" / "Rural" / "images_png").glob("*.png"))])
    row = stats.iloc[0]
    assert (row.split, row.scene, row.tiles) == ("Train", "Rural", 16)
    np.testing.assert_allclose([row["mean r"], row["mean g"], row["mean b"]], pixels.mean(0), atol=1e-4)
    np.testing.assert_allclose([row["std r"], row["std g"], row["std b"]], pixels.std(0), atol=1e-4)
    whole = manifest.release_domain_statistics()
    assert whole.tiles.sum() == 5987 and whole["no-data share"].isna().sum() == 2  # Test: no masks


def test_tree_beside_the_release(real_sample: Path) -> None:
    report = check_tree(real_sample, ["train"], "rural")
    shares = manifest.class_shares_beside_release(report)
    assert list(shares.columns) == ["split", "scene", "class", "release", "this tree"]
    assert len(shares) == MAX_RAW_VALUE + 1 and set(shares.split) == {"Train"}
    tree = class_frequencies(report)
    np.testing.assert_allclose(shares["this tree"].iloc[1:], tree.labelled_share.iloc[1:])
    release = manifest.release_class_frequencies(["Train"], ["Rural"])
    np.testing.assert_allclose(shares["release"].iloc[1:], release.labelled_share.iloc[1:])
    assert shares["release"].iloc[0] == pytest.approx(release.share.iloc[0])  # no-data: of all pixels
    domain = manifest.domain_statistics_beside_release(report)
    train_rural = domain[(domain.split == "Train") & (domain.scene == "Rural")].iloc[0]
    assert train_rural["release tiles"] == 1366 and train_rural["tree tiles"] == 16
    assert domain[domain.split == "Val"]["tree tiles"].isna().all()
