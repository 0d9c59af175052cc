"""Tests of loveda_utils.evaluation.per_tile: each tile's confusion matrix from evaluate, and the
per_tile_confusion.npz file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tree
from PIL import Image
from pixel_net import PixelNet
from torch import nn
from torch.utils.data import DataLoader

from loveda_utils.data.classes import NUM_CLASSES, raw_to_train
from loveda_utils.data.datamodule import collate
from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.evaluation.loop import evaluate
from loveda_utils.evaluation.metrics import PerSceneConfusion, scores_from_confusion
from loveda_utils.evaluation.per_tile import (
    PER_TILE_FILE,
    PerTileConfusion,
    TileConfusions,
    load_per_tile,
    save_per_tile,
)


def tile_matrix(model: nn.Module, dataset: LoveDASegmentation, index: int) -> np.ndarray:
    """One tile's confusion matrix counted with numpy from the files on disk."""
    files = dataset.files[index]
    image = torch.from_numpy(np.array(Image.open(files["image"]))).permute(2, 0, 1)[None]
    with torch.no_grad():
        pred = model(image).argmax(1)[0].numpy()
    target = raw_to_train(np.array(Image.open(files["mask"])))
    keep = target != 255
    counts = np.bincount(
        target[keep].astype(np.int64) * NUM_CLASSES + pred[keep], minlength=NUM_CLASSES**2
    )
    return counts.reshape(NUM_CLASSES, NUM_CLASSES)


def check_tiles_add_up(result, dataset: LoveDASegmentation) -> None:
    tiles = result.tiles
    assert tiles.confusion.dtype == np.int64
    assert tiles.confusion.shape == (len(dataset), NUM_CLASSES, NUM_CLASSES)
    # The sum over tiles is the evaluation's matrix exactly, so it gives the same mIoU exactly.
    assert np.array_equal(tiles.total(), result.confusion.numpy())
    assert scores_from_confusion(tiles.total()).miou == result.miou
    for scene, matrix in result.per_scene_confusion.items():
        assert np.array_equal(tiles.scene(scene).total(), matrix.numpy())
        assert scores_from_confusion(tiles.scene(scene).total()) == result.per_scene[scene]
    split = dataset.split_dir
    expected = [
        f"{split}/{Path(f['image']).parent.parent.name}/{Path(f['image']).name}"
        for f in dataset.files
    ]
    assert list(tiles.names) == expected
    assert list(tiles.scenes) == [n.split("/")[1].lower() for n in expected]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("per_tile") / "loveda", splits=("Val", "Test"), n=3)


def test_generated_tiles_add_up_to_the_evaluation(tree: Path) -> None:
    dataset = LoveDASegmentation(tree, "val", "both")
    model = PixelNet()
    # Batches of 4 over 3 Urban + 3 Rural tiles: the second batch mixes the scenes.
    result = evaluate(model, DataLoader(dataset, batch_size=4, collate_fn=collate))
    check_tiles_add_up(result, dataset)
    for i in range(len(dataset)):
        assert np.array_equal(result.tiles.confusion[i], tile_matrix(model, dataset, i))
    assert (result.tiles.confusion.sum(axis=(1, 2)) > 0).all()


def test_real_tiles_add_up_to_the_evaluation(real_sample: Path) -> None:
    dataset = LoveDASegmentation(real_sample, "train", "rural")
    model = PixelNet(seed=1)
    result = evaluate(model, DataLoader(dataset, batch_size=4, collate_fn=collate))
    check_tiles_add_up(result, dataset)
    assert result.tiles.names[0].startswith("Train/Rural/")
    for i in (0, len(dataset) - 1):
        assert np.array_equal(result.tiles.confusion[i], tile_matrix(model, dataset, i))
    nodata = sum(int((np.array(Image.open(f["mask"])) == 0).sum()) for f in dataset.files)
    assert result.tiles.confusion.sum() == len(dataset) * 1024 * 1024 - nodata


def test_limit_images_and_unscored_tiles(tree: Path) -> None:
    dataset = LoveDASegmentation(tree, "val", "both")
    cut = evaluate(PixelNet(), DataLoader(dataset, batch_size=4, collate_fn=collate),
                   limit_images=5)
    assert len(cut.tiles) == 5 and np.array_equal(cut.tiles.total(), cut.confusion.numpy())
    test = evaluate(PixelNet(), DataLoader(LoveDASegmentation(tree, "test", "both"), batch_size=2))
    assert len(test.tiles) == 0 and test.tiles.confusion.shape == (0, NUM_CLASSES, NUM_CLASSES)


def test_batches_without_names_or_scenes() -> None:
    counter = PerTileConfusion(validate=False)
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, NUM_CLASSES, (3, 8, 8), generator=g)
    target = torch.randint(0, NUM_CLASSES, (3, 8, 8), generator=g, dtype=torch.uint8)
    target[0, :2] = 255
    counter.update(pred, target, None)  # no scene, no names: overall only, named by position
    counter.update(pred[0], target[0], "Urban", ["Val/Urban/1.png"])  # one [H, W] tile
    tiles = counter.tiles()
    assert tiles.names == ("#0", "#1", "#2", "Val/Urban/1.png")
    assert tiles.scenes == ("", "", "", "urban")
    assert list(counter.scenes) == ["urban"]
    assert np.array_equal(tiles.total(), counter.overall.matrix.numpy())
    assert np.array_equal(tiles.scene("Urban").total(), counter.scenes["urban"].matrix.numpy())
    assert tiles.confusion[0].sum() == 64 - 16  # the ignored rows are not counted
    # The totals are those of PerSceneConfusion's own update, bin for bin.
    reference = PerSceneConfusion(validate=False)
    reference.update(pred, target, None)
    reference.update(pred[0], target[0], "Urban")
    assert torch.equal(reference.overall.matrix, counter.overall.matrix)
    assert torch.equal(reference.scenes["urban"].matrix, counter.scenes["urban"].matrix)

    with pytest.raises(ValueError, match="names names 1 samples but the batch holds 3"):
        counter.update(pred, target, "Urban", ["a"])
    with pytest.raises(ValueError, match="target holds labels"):
        counter.update(pred, torch.full_like(target, 9), "Urban")

    other = PerTileConfusion(validate=False)
    other.update(pred[1:], target[1:], "Rural", ["Val/Rural/2.png", "Val/Rural/3.png"])
    counter.merge(other)
    assert counter.tiles().names[-2:] == ("Val/Rural/2.png", "Val/Rural/3.png")
    assert np.array_equal(counter.tiles().total(), counter.overall.matrix.numpy())
    with pytest.raises(TypeError, match="no per-tile counts"):
        counter.merge(PerSceneConfusion())
    counter.reset()
    assert len(counter.tiles()) == 0 and int(counter.overall.matrix.sum()) == 0


def test_tile_confusions_refuse_inconsistent_input() -> None:
    counts = np.zeros((2, NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    with pytest.raises(ValueError, match="unique"):
        TileConfusions(("a", "a"), ("urban", "urban"), counts)
    with pytest.raises(ValueError, match="2 names and 1 scenes"):
        TileConfusions(("a", "b"), ("urban",), counts)
    with pytest.raises(ValueError, match="int64"):
        TileConfusions(("a", "b"), ("urban", "rural"), counts.astype(np.float64))
    with pytest.raises(ValueError, match=r"\[N, 7, 7\]"):
        TileConfusions(("a", "b"), ("urban", "rural"), counts[:, :3, :3])


def test_save_and_load_round_trip(tree: Path, tmp_path: Path) -> None:
    loader = DataLoader(LoveDASegmentation(tree, "val", "both"), batch_size=4, collate_fn=collate)
    single = evaluate(PixelNet(), loader)
    ms = evaluate(PixelNet(), loader, ms_flip=True, scales=(0.5, 1.0))
    path = save_per_tile(tmp_path / PER_TILE_FILE, single.tiles, ms.tiles)
    assert [p.name for p in tmp_path.iterdir()] == [PER_TILE_FILE]  # no temp file left

    with np.load(path, allow_pickle=False) as data:  # plain arrays, nothing pickled
        assert set(data.files) == {"names", "scenes", "class_names", "confusion",
                                   "confusion_ms_flip"}
        assert data["confusion"].dtype == np.int64
        assert data["confusion"].shape == (6, NUM_CLASSES, NUM_CLASSES)
        assert np.array_equal(data["confusion"].sum(0), single.confusion.numpy())
        assert np.array_equal(data["confusion_ms_flip"].sum(0), ms.confusion.numpy())
        assert list(data["names"]) == list(single.tiles.names)
    loaded = load_per_tile(path)
    assert loaded.single.names == single.tiles.names
    assert loaded.single.scenes == single.tiles.scenes
    assert loaded.single.class_names == single.tiles.class_names
    assert np.array_equal(loaded.single.confusion, single.tiles.confusion)
    assert loaded.ms_flip is not None
    assert np.array_equal(loaded.ms_flip.confusion, ms.tiles.confusion)

    only_single = load_per_tile(save_per_tile(tmp_path / "single.npz", single.tiles))
    assert only_single.ms_flip is None

    with pytest.raises(ValueError, match="ms_flip's tiles differ"):
        save_per_tile(tmp_path / "bad.npz", single.tiles, ms.tiles.select([1, 0, 2, 3, 4, 5]))
    assert not (tmp_path / "bad.npz").exists()


def test_load_names_the_bad_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_per_tile(tmp_path / "absent.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="garbage.npz is not a readable"):
        load_per_tile(garbage)
    partial = tmp_path / "partial.npz"
    np.savez_compressed(partial, names=np.array(["a"]))
    with pytest.raises(ValueError, match=r"partial.npz lacks \['scenes', 'confusion'\]"):
        load_per_tile(partial)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, names=np.array([object()], dtype=object), scenes=np.array(["urban"]),
             confusion=np.zeros((1, NUM_CLASSES, NUM_CLASSES), dtype=np.int64))
    assert zipfile.is_zipfile(pickled)
    with pytest.raises(ValueError, match="pickled.npz is not a readable"):
        load_per_tile(pickled)


def test_select_and_scene_of_no_tile() -> None:
    counts = np.arange(2 * NUM_CLASSES**2, dtype=np.int64).reshape(2, NUM_CLASSES, NUM_CLASSES)
    tiles = TileConfusions(("Val/Urban/1.png", "Val/Urban/2.png"), ("urban", "urban"), counts)
    none = tiles.scene("rural")
    assert len(none) == 0 and none.confusion.shape == (0, NUM_CLASSES, NUM_CLASSES)
    assert np.array_equal(none.total(), np.zeros((NUM_CLASSES, NUM_CLASSES)))
    assert tiles.select(np.array([False, True])).names == ("Val/Urban/2.png",)
    assert np.array_equal(tiles.select([1, 0]).confusion, counts[::-1])
