"""Tests of loveda_utils.evaluation.loop: evaluate() over real PNG trees, scores, saved predictions, memory."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pixel_net import PixelNet
from torch.utils.data import DataLoader, Dataset

from loveda_utils.data.classes import NUM_CLASSES, raw_to_train
from loveda_utils.evaluation.inference import (
    MS_FLIP_SCALES,
)
from loveda_utils.evaluation.loop import EvaluationResult, evaluate
from loveda_utils.evaluation.metrics import ConfusionMatrix, scores_from_confusion

TILE = 64


def write_tree(root: Path, n_per_scene: int = 3, size: int = TILE, seed: int = 0) -> Path:
    """A tiny LoveDA layout: Val with masks (raw 0..7, 0 = no-data), Test without."""
    rng = np.random.default_rng(seed)
    ids = {"Urban": 100, "Rural": 200}  # ids are unique across scenes, as in LoveDA
    for split in ("Val", "Test"):
        for scene, first in ids.items():
            img_dir = root / split / scene / "images_png"
            img_dir.mkdir(parents=True)
            for i in range(n_per_scene):
                name = f"{first + i + (50 if split == 'Test' else 0)}.png"
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(image).save(img_dir / name)
                if split == "Val":
                    mask_dir = root / split / scene / "masks_png"
                    mask_dir.mkdir(exist_ok=True)
                    mask = rng.integers(1, 8, (size, size), dtype=np.uint8)
                    mask[rng.random((size, size)) < 0.1] = 0  # no-data
                    Image.fromarray(mask).save(mask_dir / name)
    return root


class TinyLoveDA(Dataset):
    """Reads a LoveDA split into CONTRACTS.md samples (scenes interleaved, so batches mix)."""

    def __init__(self, root: Path, split: str) -> None:
        per_scene = [
            sorted((root / split / scene / "images_png").glob("*.png"))
            for scene in ("Urban", "Rural")
        ]
        self.files = [p for pair in zip(*per_scene, strict=True) for p in pair]
        self.split = split

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        image = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1).contiguous()
        sample = {"image": image, "scene": path.parents[1].name, "split": self.split}
        sample["name"] = path.name
        mask_path = path.parents[1] / "masks_png" / path.name
        if mask_path.exists():
            sample["mask"] = raw_to_train(torch.from_numpy(np.array(Image.open(mask_path))))
        return sample


def miou_from_disk(pred_dir: Path, data_root: Path, files: list[Path]) -> tuple[float, dict]:
    """Recompute mIoU with numpy from saved predictions (raw 1..7) and masks on disk."""
    total = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    per_scene: dict[str, np.ndarray] = {}
    for image_path in files:
        scene = image_path.parents[1].name
        pred = np.array(Image.open(pred_dir / "Val" / scene / image_path.name)).astype(np.int64)
        raw = np.array(Image.open(image_path.parents[1] / "masks_png" / image_path.name))
        keep = raw != 0
        counts = np.bincount(
            (raw[keep].astype(np.int64) - 1) * NUM_CLASSES + (pred[keep] - 1),
            minlength=NUM_CLASSES**2,
        ).reshape(NUM_CLASSES, NUM_CLASSES)
        total += counts
        per_scene[scene.lower()] = per_scene.get(scene.lower(), 0) + counts

    def miou(m: np.ndarray) -> float:
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        return float(np.mean(tp[union > 0] / union[union > 0]))

    return miou(total), {k: miou(v) for k, v in per_scene.items()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("loveda"))


def loader(root: Path, split: str = "Val", batch_size: int = 2) -> DataLoader:
    return DataLoader(TinyLoveDA(root, split), batch_size=batch_size, shuffle=False)


def test_evaluate_scores_and_saves_predictions(tree: Path, tmp_path: Path) -> None:
    model = PixelNet()
    model.train()
    out = tmp_path / "predictions"
    result = evaluate(model, loader(tree), save_predictions_dir=out)

    assert model.training  # the caller's mode is restored
    assert result.n_images == result.n_scored == 6
    assert result.seconds > 0
    assert result.confusion.shape == (NUM_CLASSES, NUM_CLASSES)
    assert result.scores == scores_from_confusion(result.confusion)
    assert set(result.per_scene) == {"urban", "rural"}
    assert torch.equal(
        result.per_scene_confusion["urban"] + result.per_scene_confusion["rural"],
        result.confusion,
    )
    for scene, scores in result.per_scene.items():
        assert scores == scores_from_confusion(result.per_scene_confusion[scene])
    masks = [
        np.array(Image.open(p.parents[1] / "masks_png" / p.name))
        for p in loader(tree).dataset.files
    ]
    assert result.scores.n_pixels == sum(int((m != 0).sum()) for m in masks)

    files = loader(tree).dataset.files
    saved = sorted(out.rglob("*.png"))
    assert sorted(p.relative_to(out) for p in saved) == sorted(
        Path("Val") / p.parents[1].name / p.name for p in files
    )
    for path in saved:
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (TILE, TILE)
            values = np.unique(np.array(image))
        assert values.min() >= 1 and values.max() <= NUM_CLASSES
    miou, per_scene = miou_from_disk(out, tree, files)
    assert result.scores.miou == pytest.approx(miou, abs=1e-12)
    for scene, value in per_scene.items():
        assert result.per_scene[scene].miou == pytest.approx(value, abs=1e-12)

    record = result.to_dict()
    assert record["per_scene_miou"]["urban"] == result.per_scene["urban"].miou


def test_evaluate_limit_images(tree: Path) -> None:
    model = PixelNet()
    result = evaluate(model, loader(tree, batch_size=2), limit_images=3)
    assert result.n_images == 3
    assert sum(c[0] for c in model.calls) == 3  # the second batch was cut, no third batch
    first3 = loader(tree).dataset.files[:3]
    masks = [np.array(Image.open(p.parents[1] / "masks_png" / p.name)) for p in first3]
    assert result.scores.n_pixels == sum(int((m != 0).sum()) for m in masks)
    with pytest.raises(ValueError, match="limit_images"):
        evaluate(model, loader(tree), limit_images=0)


def test_evaluate_test_split_saves_but_does_not_score(tree: Path, tmp_path: Path) -> None:
    result = evaluate(PixelNet(), loader(tree, "Test"), save_predictions_dir=tmp_path)
    assert result.n_images == 6 and result.n_scored == 0
    assert result.scores is None and result.per_scene == {}
    assert int(result.confusion.sum()) == 0
    saved = sorted(tmp_path.rglob("*.png"))
    assert len(saved) == 6 and {p.parent.name for p in saved} == {"Urban", "Rural"}
    assert all(p.parts[-3] == "Test" for p in saved)


def test_evaluate_modes_agree_for_a_local_model(tree: Path) -> None:
    whole = evaluate(PixelNet(), loader(tree))
    slide = evaluate(PixelNet(), loader(tree), mode="slide", window=32, stride=24)
    ms = evaluate(PixelNet(), loader(tree), ms_flip=True, scales=(1.0,), flip=True)
    cl = evaluate(PixelNet(), loader(tree), channels_last=True)
    assert torch.equal(slide.confusion, whole.confusion)
    assert torch.equal(ms.confusion, whole.confusion)
    assert torch.equal(cl.confusion, whole.confusion)
    full_ms = evaluate(PixelNet(), loader(tree), ms_flip=True, limit_images=2)
    assert full_ms.settings["scales"] == list(MS_FLIP_SCALES)


def test_evaluate_autocast_only_when_asked_on_cpu(tree: Path) -> None:
    model = PixelNet()
    result = evaluate(model, loader(tree), limit_images=2, device="cpu")
    assert model.autocast == [False] and result.settings["amp"] is None
    model = PixelNet()
    result = evaluate(model, loader(tree), limit_images=2, amp=True)
    assert model.autocast == [True] and result.scores is not None
    assert result.settings["amp"] == "bfloat16"


def test_evaluate_needs_names_to_save(tree: Path, tmp_path: Path) -> None:
    batch = next(iter(loader(tree)))
    del batch["name"]
    with pytest.raises(ValueError, match="'split', 'scene' and 'name'"):
        evaluate(PixelNet(), [batch], save_predictions_dir=tmp_path)
    # Without saving, a batch needs no name, and no mask either.
    del batch["mask"]
    assert evaluate(PixelNet(), [batch]).n_images == 2


def tensor_footprint(result: EvaluationResult) -> list[tuple[int, ...]]:
    """Shapes of every tensor the result holds."""
    shapes = []

    def walk(value: object) -> None:
        if isinstance(value, torch.Tensor):
            shapes.append(tuple(value.shape))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))

    walk(result)
    return sorted(shapes)


class LogitCensus(PixelNet):
    """Counts, at every forward, the live logit-shaped tensors [*, 7, H, W] in the process."""

    def __init__(self) -> None:
        super().__init__()
        self.live: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        self.live.append(
            sum(
                1
                for obj in gc.get_objects()
                if issubclass(type(obj), torch.Tensor)
                and obj.ndim == 4
                and obj.shape[1] == NUM_CLASSES
                and tuple(obj.shape[-2:]) == (h, w)
            )
        )
        return super().forward(images)


def test_evaluate_memory_is_flat_in_the_number_of_tiles(tmp_path: Path) -> None:
    small = write_tree(tmp_path / "small", n_per_scene=2, size=32)
    large = write_tree(tmp_path / "large", n_per_scene=8, size=32, seed=1)
    model = LogitCensus()
    r_small = evaluate(model, loader(small))
    r_large = evaluate(model, loader(large))
    assert (r_small.n_images, r_large.n_images) == (4, 16)
    # No logits of an earlier batch are alive while the next batch is predicted.
    assert len(model.live) == 2 + 8 and set(model.live) == {0}
    # The result holds the same fixed-size matrices whatever the number of tiles.
    assert tensor_footprint(r_small) == tensor_footprint(r_large)
    assert set(tensor_footprint(r_large)) == {(NUM_CLASSES, NUM_CLASSES)}
    # Only the per-tile counts grow with the tiles: 49 int64 per tile, nothing pixel-sized.
    assert r_large.tiles.confusion.shape == (16, NUM_CLASSES, NUM_CLASSES)
    assert r_large.tiles.confusion.nbytes == 16 * NUM_CLASSES**2 * 8


def test_evaluate_result_agrees_with_a_direct_confusion(tree: Path) -> None:
    model = PixelNet()
    result = evaluate(model, loader(tree, batch_size=4))
    direct = ConfusionMatrix()
    for batch in loader(tree):
        direct.update(model(batch["image"]).argmax(1), batch["mask"])
    assert torch.equal(result.confusion, direct.matrix)
    assert (direct.matrix.sum(1) > 0).all()  # the random masks hold every class
