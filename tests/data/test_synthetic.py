"""Tests of the mini-LoveDA generator (``loveda_utils.data.synthetic``): real PNG trees in tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loveda_utils.data import synthetic
from loveda_utils.data.classes import NUM_CLASSES, RAW_NODATA, SCENES, SPLITS, SPLITS_WITH_MASKS
from loveda_utils.data.synthetic import (
    DEFAULT_SEED,
    DEFAULT_SIZE,
    DEFAULT_TILES,
    MARKER_NAME,
    generate_mini_loveda,
    is_synthetic,
    read_marker,
)
from loveda_utils.errors import ConfigError, InvalidDataError

SIZE = 64


def _files(root: Path) -> dict[str, bytes]:
    """Every file of a tree, by relative path, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _pairs(root: Path, split: str, scene: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image [S, S, 3], raw mask [S, S]) of every tile of a split/scene, read back from disk."""
    images = sorted((root / split / scene / "images_png").glob("*.png"))
    return [
        (
            np.asarray(Image.open(p)),
            np.asarray(Image.open(p.parent.parent / "masks_png" / p.name)),
        )
        for p in images
    ]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tree: 2 Train, 1 Val, 1 Test tile per scene, 64 px."""
    return generate_mini_loveda(tmp_path_factory.mktemp("mini") / "loveda", tiles=2, size=SIZE)


@pytest.fixture(scope="module")
def larger_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough tiles for stable statistics: 8 Train, 4 Val per scene, 96 px."""
    return generate_mini_loveda(tmp_path_factory.mktemp("mini") / "loveda", tiles=8, size=96)


def test_defaults() -> None:
    assert (DEFAULT_TILES, DEFAULT_SIZE, DEFAULT_SEED) == (16, 256, 0)


def test_layout_formats_and_values(tree: Path) -> None:
    expected_counts = {"Train": 2, "Val": 1, "Test": 1}
    top = {p.name for p in tree.iterdir()}
    assert top == {*SPLITS, MARKER_NAME}  # no leftovers, nothing else
    ids: list[int] = []
    seen = np.zeros(NUM_CLASSES + 1, dtype=bool)
    for split in SPLITS:
        for scene in SCENES:
            folder = tree / split / scene
            subfolders = {p.name for p in folder.iterdir()}
            has_masks = split in SPLITS_WITH_MASKS
            assert subfolders == ({"images_png", "masks_png"} if has_masks else {"images_png"})
            images = sorted((folder / "images_png").iterdir())
            assert len(images) == expected_counts[split]
            for path in images:
                assert path.suffix == ".png" and path.stem.isdigit()
                ids.append(int(path.stem))
                with Image.open(path) as image:
                    assert image.format == "PNG" and image.mode == "RGB"
                    assert image.size == (SIZE, SIZE)
                if has_masks:
                    mask_path = folder / "masks_png" / path.name
                    with Image.open(mask_path) as mask_image:
                        assert mask_image.mode == "L" and mask_image.size == (SIZE, SIZE)
                        mask = np.asarray(mask_image)
                    assert mask.max() <= NUM_CLASSES
                    seen[np.unique(mask)] = True
            if has_masks:
                masks = sorted(p.name for p in (folder / "masks_png").iterdir())
                assert masks == [p.name for p in images]
    assert len(ids) == len(set(ids)), "ids must be unique across the whole tree"
    assert seen[1:].all(), f"classes missing from the tree: {np.flatnonzero(~seen[1:]) + 1}"
    assert seen[RAW_NODATA], "no no-data anywhere in the tree"


def test_nodata_is_black_and_image_follows_mask(tree: Path) -> None:
    nodata_pixels = 0
    for split in SPLITS_WITH_MASKS:
        for scene in SCENES:
            for image, mask in _pairs(tree, split, scene):
                nodata = mask == RAW_NODATA
                nodata_pixels += int(nodata.sum())
                assert (image[nodata] == 0).all(), "no-data pixels must be exactly black"
                # Valid land cover is never rendered pure black (that would read as no-data).
                assert (image[~nodata].max(axis=-1) > 0).all()
    assert nodata_pixels > 0


def test_marker(tree: Path, tmp_path: Path) -> None:
    marker = read_marker(tree)
    assert marker is not None
    assert marker["synthetic"] is True
    assert marker["generator"] == "loveda_utils.data.synthetic"
    assert isinstance(marker["version"], int)
    assert (marker["tiles"], marker["size"], marker["seed"]) == (2, SIZE, 0)
    assert is_synthetic(tree)
    # A tree without the marker (a real LoveDA root) is not synthetic.
    assert not is_synthetic(tmp_path) and read_marker(tmp_path) is None


def test_urban_denser_in_buildings_and_roads(larger_tree: Path) -> None:
    share = {}
    for scene in SCENES:
        counts = np.zeros(NUM_CLASSES + 1)
        for split in SPLITS_WITH_MASKS:
            for _, mask in _pairs(larger_tree, split, scene):
                counts += np.bincount(mask.ravel(), minlength=NUM_CLASSES + 1)
        valid = counts[1:].sum()
        share[scene] = {
            "built": (counts[2] + counts[3]) / valid,
            "natural": (counts[4] + counts[6] + counts[7]) / valid,
        }
    assert share["Urban"]["built"] > 2 * share["Rural"]["built"], share
    assert share["Rural"]["natural"] > 2 * share["Urban"]["natural"], share


def test_deterministic(tree: Path, tmp_path: Path) -> None:
    again = generate_mini_loveda(tmp_path / "again", tiles=2, size=SIZE, seed=0)
    assert _files(again) == _files(tree)
    other = generate_mini_loveda(tmp_path / "other", tiles=2, size=SIZE, seed=1)
    a, b = _files(tree), _files(other)
    assert a.keys() == b.keys()
    differing = [k for k in a if k.endswith(".png") and a[k] != b[k]]
    assert len(differing) == sum(k.endswith(".png") for k in a)


def test_more_tiles_keep_the_first_tiles(tree: Path, tmp_path: Path) -> None:
    """Tiles are seeded by (seed, split, scene, index): a bigger tree starts with the same tiles."""
    bigger = generate_mini_loveda(tmp_path / "bigger", tiles=4, size=SIZE)
    for scene in SCENES:
        small = _pairs(tree, "Train", scene)
        large = _pairs(bigger, "Train", scene)
        for (image_a, mask_a), (image_b, mask_b) in zip(small, large[: len(small)], strict=True):
            assert np.array_equal(image_a, image_b) and np.array_equal(mask_a, mask_b)


def test_loads_through_torchgeo(tree: Path) -> None:
    torchgeo_datasets = pytest.importorskip("torchgeo.datasets")
    for split, n in (("train", 4), ("val", 2)):
        dataset = torchgeo_datasets.LoveDA(
            root=str(tree), split=split, scene=["urban", "rural"], download=False
        )
        assert len(dataset) == n
        sample = dataset[0]
        assert tuple(sample["image"].shape) == (3, SIZE, SIZE)
        assert tuple(sample["mask"].shape) == (SIZE, SIZE)
        assert int(sample["mask"].max()) <= NUM_CLASSES
    test = torchgeo_datasets.LoveDA(root=str(tree), split="test", download=False)
    assert len(test) == 2 and "mask" not in test[0]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"tiles": 0}, "tiles"),
        ({"tiles": 2.5}, "tiles"),
        ({"size": 31}, "size"),
        ({"size": True}, "size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=rf"\b{name}="):
        generate_mini_loveda(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_folders(tree: Path, tmp_path: Path) -> None:
    # A non-empty folder is refused without overwrite and left untouched.
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="out=.*overwrite=True"):
        generate_mini_loveda(occupied, tiles=1, size=32)
    # Even with overwrite, a folder that is not a mini-LoveDA tree is never deleted.
    with pytest.raises(ConfigError, match=MARKER_NAME):
        generate_mini_loveda(occupied, tiles=1, size=32, overwrite=True)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    # A file is not a folder.
    with pytest.raises(ConfigError, match="out=.*file"):
        generate_mini_loveda(occupied / "keep.txt", tiles=1, size=32)
    # An empty folder is fine; a previous mini-LoveDA tree is replaced with overwrite=True.
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_mini_loveda(empty, tiles=1, size=32)
    assert read_marker(empty)["size"] == 32
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy)
    generate_mini_loveda(copy, tiles=1, size=32, overwrite=True)
    assert read_marker(copy)["size"] == 32
    assert len(list((copy / "Train" / "Urban" / "images_png").iterdir())) == 1
    # Nothing but the trees themselves is left beside them (no temporary folders).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "empty", "occupied"]


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_make_tile = synthetic.make_tile

    def failing_make_tile(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_make_tile(*args, **kwargs)

    monkeypatch.setattr(synthetic, "make_tile", failing_make_tile)
    with pytest.raises(KeyboardInterrupt):
        generate_mini_loveda(tmp_path / "out", tiles=2, size=32)
    assert list(tmp_path.iterdir()) == []  # no partial tree at out, no temporary sibling


def test_concurrent_identical_tree_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parallel runs generating the same default tree: the loser keeps the winner's tree."""
    out = tmp_path / "out"
    real_write_tree = synthetic._write_tree

    def racing_write_tree(root: Path, **kwargs):
        marker = real_write_tree(root, **kwargs)
        shutil.copytree(root, out)  # another process finishes first
        return marker

    monkeypatch.setattr(synthetic, "_write_tree", racing_write_tree)
    assert generate_mini_loveda(out, tiles=1, size=32) == out
    assert is_synthetic(out) and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_damaged_marker_still_counts_as_synthetic(tmp_path: Path) -> None:
    (tmp_path / MARKER_NAME).write_text("{not json")
    assert is_synthetic(tmp_path)
    with pytest.raises(InvalidDataError, match=MARKER_NAME):
        read_marker(tmp_path)


def _features(image: np.ndarray) -> np.ndarray:
    """Per-pixel colour + texture features: RGB, local means (5, 13 px), local grey std (3, 7 px)."""

    def box(a: np.ndarray, r: int) -> np.ndarray:
        pad = ((r + 1, r), (r + 1, r)) + ((0, 0),) * (a.ndim - 2)
        c = np.pad(a, pad, mode="edge").cumsum(0).cumsum(1)
        k = 2 * r + 1
        return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)

    x = image.astype(np.float64) / 255
    grey = x.mean(-1)
    features = [x, box(x, 2), box(x, 6)]
    for r in (1, 3):
        mean = box(grey, r)
        features.append(np.sqrt(np.maximum(box(grey * grey, r) - mean * mean, 0))[..., None])
    return np.concatenate(features, -1)


def _dataset(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for scene in SCENES:
        for image, mask in _pairs(root, split, scene):
            valid = mask != RAW_NODATA
            xs.append(_features(image)[valid])
            ys.append(mask[valid].astype(np.int64) - 1)
    return np.concatenate(xs), np.concatenate(ys)


def test_learnable_from_local_colour_and_texture(larger_tree: Path) -> None:
    """A linear discriminant on local colour/texture, fit on Train, beats the majority on Val.

    Threshold: pixel accuracy > 0.5 and at least 0.1 above the Val majority-class share
    (about 0.35-0.4); for seeds 0-5 this classifier reaches 0.60-0.65.
    """
    x_train, y_train = _dataset(larger_tree, "Train")
    x_val, y_val = _dataset(larger_tree, "Val")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    classes = np.unique(y_train)
    assert len(classes) == NUM_CLASSES
    centroids = np.stack([x_train[y_train == c].mean(0) for c in classes])
    covariance = sum(np.cov(x_train[y_train == c].T) * (y_train == c).sum() for c in classes)
    precision = np.linalg.inv(covariance / len(y_train) + 1e-3 * np.eye(x_train.shape[1]))
    log_prior = np.log([(y_train == c).mean() for c in classes])
    scores = (
        x_val @ precision @ centroids.T
        - 0.5 * np.einsum("kd,de,ke->k", centroids, precision, centroids)
        + log_prior
    )
    accuracy = float((classes[scores.argmax(1)] == y_val).mean())
    majority = np.bincount(y_val).max() / len(y_val)
    assert accuracy > 0.5 and accuracy > majority + 0.1, (accuracy, majority)


def test_marker_is_json_file(tree: Path) -> None:
    """The marker is plain JSON other tools (and people) can read."""
    marker = json.loads((tree / MARKER_NAME).read_text(encoding="utf-8"))
    assert marker == read_marker(tree)


def test_large_tiles_work() -> None:
    """1024 px tiles (LoveDA's size) generate, with the scene structures intact."""
    mask, image = synthetic.make_tile(np.random.default_rng(0), 1024, urban=True)
    assert mask.shape == (1024, 1024) and image.shape == (1024, 1024, 3)
    assert mask.dtype == np.uint8 and image.dtype == np.uint8
    assert {2, 3} <= set(np.unique(mask).tolist())
