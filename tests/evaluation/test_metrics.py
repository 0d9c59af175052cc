"""Tests of loveda_utils.evaluation.metrics against an independent numpy MMSeg computation and torchmetrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from loveda_utils.data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from loveda_utils.evaluation.metrics import (
    ConfusionMatrix,
    PerSceneConfusion,
    scores_from_confusion,
    torchmetrics_scores,
)

ABSENT = 4  # "barren": absent from both prediction and target in the random data


def mmseg_reference(preds: np.ndarray, targets: np.ndarray, num_classes: int = NUM_CLASSES):
    """MMSeg's ``intersect_and_union`` summed over images, then ``total_area_to_metrics``."""
    inter = np.zeros(num_classes)
    area_pred = np.zeros(num_classes)
    area_label = np.zeros(num_classes)
    for pred, label in zip(preds, targets, strict=True):
        keep = label != IGNORE_INDEX
        pred, label = pred[keep], label[keep]
        hit = pred[pred == label]
        bins = np.arange(num_classes + 1)
        inter += np.histogram(hit, bins=bins)[0]
        area_pred += np.histogram(pred, bins=bins)[0]
        area_label += np.histogram(label, bins=bins)[0]
    union = area_pred + area_label - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
        acc = inter / area_label
        dice = 2 * inter / (area_pred + area_label)
    return {
        "iou": iou,
        "miou": np.nanmean(iou),
        "aAcc": inter.sum() / area_label.sum(),
        "mAcc": np.nanmean(acc),
        "dice": dice,
        "mDice": np.nanmean(dice),
    }


def random_batch(seed: int, n: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Random labels without class ABSENT, targets with ~15% ignore pixels (uint8)."""
    g = torch.Generator().manual_seed(seed)
    present = torch.tensor([c for c in range(NUM_CLASSES) if c != ABSENT])
    pred = present[torch.randint(len(present), (n, size, size), generator=g)]
    target = present[torch.randint(len(present), (n, size, size), generator=g)]
    # Make predictions better than chance so IoUs are not all alike.
    agree = torch.rand((n, size, size), generator=g) < 0.5
    pred = torch.where(agree, target, pred)
    ignore = torch.rand((n, size, size), generator=g) < 0.15
    target = torch.where(ignore, torch.tensor(IGNORE_INDEX), target).to(torch.uint8)
    return pred, target


def test_hand_computed_example() -> None:
    # 2 classes: gt [0 0 1 1 | ignore], pred [0 1 1 1 | 0]
    cm = ConfusionMatrix(num_classes=2, class_names=("a", "b"))
    cm.update(torch.tensor([[0, 1, 1, 1, 0]]), torch.tensor([[0, 0, 1, 1, 255]]))
    assert cm.matrix.tolist() == [[1, 1], [0, 2]]
    s = cm.compute()
    assert s.per_class_iou == {"a": 0.5, "b": pytest.approx(2 / 3)}
    assert s.miou == pytest.approx((0.5 + 2 / 3) / 2)
    assert s.accuracy == pytest.approx(3 / 4)
    assert s.mean_accuracy == pytest.approx((0.5 + 1.0) / 2)
    assert s.per_class_f1 == {"a": pytest.approx(2 / 3), "b": pytest.approx(0.8)}
    assert s.n_pixels == 4


def test_miou_equals_numpy_mmseg_reference() -> None:
    pred, target = random_batch(0)
    cm = ConfusionMatrix()
    cm.update(pred, target)
    assert cm.matrix.dtype == torch.int64 and cm.matrix.shape == (NUM_CLASSES, NUM_CLASSES)
    s = cm.compute()
    ref = mmseg_reference(pred.numpy(), target.numpy())

    assert s.miou == pytest.approx(ref["miou"], abs=1e-12)
    assert s.accuracy == pytest.approx(ref["aAcc"], abs=1e-12)
    assert s.mean_accuracy == pytest.approx(ref["mAcc"], abs=1e-12)
    assert s.mean_f1 == pytest.approx(ref["mDice"], abs=1e-12)
    for c, name in enumerate(CLASS_NAMES):
        if c == ABSENT:
            assert math.isnan(ref["iou"][c])
            assert s.per_class_iou[name] is None and s.per_class_f1[name] is None
        else:
            assert s.per_class_iou[name] == pytest.approx(ref["iou"][c], abs=1e-12)
            assert s.per_class_f1[name] == pytest.approx(ref["dice"][c], abs=1e-12)
    # The absent class is left out of the mean, not counted as 0.
    defined = [v for v in s.per_class_iou.values() if v is not None]
    assert len(defined) == NUM_CLASSES - 1
    assert s.miou == pytest.approx(sum(defined) / len(defined))
    assert s.n_pixels == int((target != IGNORE_INDEX).sum())
    assert 0.0 <= s.miou <= 1.0


def test_accumulation_equals_one_pass_over_the_concatenation() -> None:
    batches = [random_batch(seed, n=2) for seed in range(4)]
    acc = ConfusionMatrix()
    for pred, target in batches:
        acc.update(pred, target)
    whole = ConfusionMatrix()
    whole.update(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]))
    assert torch.equal(acc.matrix, whole.matrix)
    assert acc.compute() == whole.compute()

    # Merging partial matrices (e.g. from two workers) gives the same counts.
    a, b = ConfusionMatrix(), ConfusionMatrix()
    for i, (pred, target) in enumerate(batches):
        (a if i % 2 else b).update(pred, target)
    merged = a + b
    assert torch.equal(merged.matrix, whole.matrix)
    assert not torch.equal(a.matrix, whole.matrix)  # __add__ left its operands alone
    a.merge(b)
    assert torch.equal(a.matrix, whole.matrix)
    a.reset()
    assert int(a.matrix.sum()) == 0


def test_single_tile_and_long_target() -> None:
    pred, target = random_batch(1, n=1)
    cm2d, cm3d = ConfusionMatrix(), ConfusionMatrix()
    cm2d.update(pred[0], target[0].long())
    cm3d.update(pred, target)
    assert torch.equal(cm2d.matrix, cm3d.matrix)


def test_agrees_with_torchmetrics_per_class() -> None:
    pred, target = random_batch(2, n=4)
    ours = ConfusionMatrix()
    ours.update(pred, target)
    s = ours.compute()
    tm = torchmetrics_scores(pred, target)
    for c, name in enumerate(CLASS_NAMES):
        if c == ABSENT:
            # torchmetrics scores a class with an empty union as 0 (zero_division); we leave
            # it undefined and out of the mean, as MMSeg does.
            assert float(tm["iou"][c]) == 0.0 and s.per_class_iou[name] is None
            continue
        assert s.per_class_iou[name] == pytest.approx(float(tm["iou"][c]), abs=1e-6)
        assert s.per_class_f1[name] == pytest.approx(float(tm["f1"][c]), abs=1e-6)
    assert s.accuracy == pytest.approx(float(tm["accuracy"]), abs=1e-6)


def test_class_never_predicted_has_iou_zero() -> None:
    # Class 2 is in the target but never predicted: IoU 0 (union > 0), counted in the mean.
    pred = torch.tensor([[0, 0, 1, 1]])
    target = torch.tensor([[0, 2, 1, 1]], dtype=torch.uint8)
    cm = ConfusionMatrix(num_classes=3, class_names=("a", "b", "c"))
    cm.update(pred, target)
    s = cm.compute()
    assert s.per_class_iou == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert s.miou == pytest.approx(0.5)
    assert s.per_class_f1["c"] == 0.0


def test_to_dict_is_strict_json() -> None:
    pred, target = random_batch(3)
    cm = ConfusionMatrix()
    cm.update(pred, target)
    d = cm.compute().to_dict()
    text = json.dumps(d, allow_nan=False)  # raises on NaN
    assert json.loads(text)["per_class_iou"][CLASS_NAMES[ABSENT]] is None
    assert set(d["per_class_iou"]) == set(CLASS_NAMES)

    empty = ConfusionMatrix().compute()
    assert math.isnan(empty.miou) and empty.n_pixels == 0
    assert json.loads(json.dumps(empty.to_dict(), allow_nan=False))["miou"] is None


def test_scores_from_confusion_is_pure_and_checks_shape() -> None:
    matrix = torch.tensor([[3, 1], [0, 4]])
    before = matrix.clone()
    s = scores_from_confusion(matrix, ("a", "b"))
    assert torch.equal(matrix, before)
    assert s.per_class_iou == {"a": 0.75, "b": 0.8}
    assert scores_from_confusion(matrix.numpy(), ("a", "b")) == s
    with pytest.raises(ValueError, match="square"):
        scores_from_confusion(torch.zeros(2, 3), ("a", "b"))
    with pytest.raises(ValueError, match="class_names has 7 names"):
        scores_from_confusion(matrix)


def test_update_validates_inputs() -> None:
    cm = ConfusionMatrix()
    target = torch.zeros((2, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"pred \(2, 8, 9\) and target \(2, 8, 8\)"):
        cm.update(torch.zeros((2, 8, 9), dtype=torch.long), target)
    with pytest.raises(ValueError, match=r"pred holds labels \[7\] outside 0..6"):
        cm.update(torch.full((2, 8, 8), 7), target)
    with pytest.raises(ValueError, match=r"pred holds labels \[-1\]"):
        cm.update(torch.full((2, 8, 8), -1), target)
    with pytest.raises(ValueError, match="argmax"):
        cm.update(torch.zeros((2, 8, 8)), target)
    with pytest.raises(ValueError, match=r"target holds labels \[9\].*raw_to_train"):
        cm.update(torch.zeros((2, 8, 8), dtype=torch.long), torch.full((2, 8, 8), 9))
    assert int(cm.matrix.sum()) == 0  # failed updates count nothing


def test_uint8_and_long_targets_count_alike_and_invalid_uint8_targets_raise() -> None:
    # uint8 targets are counted in 256 rows of bins (no masking pass); long targets take the
    # checked path. Both must give the reference matrix, with and without per-scene groups.
    pred, target = random_batch(11, n=4)
    keep = target != IGNORE_INDEX
    index = target.long()[keep] * NUM_CLASSES + pred[keep]
    expected = torch.bincount(index, minlength=NUM_CLASSES**2).view(NUM_CLASSES, NUM_CLASSES)
    for t in (target, target.long(), target.to(torch.int32)):
        for validate in (True, False):
            cm = ConfusionMatrix(validate=validate)
            cm.update(pred, t)
            assert torch.equal(cm.matrix, expected), (t.dtype, validate)
            per_scene = PerSceneConfusion(validate=validate)
            per_scene.update(pred.to(torch.uint8), t, ["Urban", "Rural", "Urban", "Rural"])
            assert torch.equal(per_scene.overall.matrix, expected)
            assert torch.equal(
                per_scene.scenes["urban"].matrix + per_scene.scenes["rural"].matrix, expected
            )

    cm = ConfusionMatrix()
    bad = target.clone()
    bad[0, 0, :3] = torch.tensor([7, 9, 200], dtype=torch.uint8)  # 255 stays "ignore"
    with pytest.raises(ValueError, match=r"target holds labels \[7, 9, 200\].*raw_to_train"):
        cm.update(pred, bad)
    with pytest.raises(ValueError, match=r"target holds labels \[-3\]"):
        cm.update(pred, torch.full((4, 16, 16), -3))
    assert int(cm.matrix.sum()) == 0  # failed updates count nothing


def test_an_ignore_index_inside_the_classes_drops_that_row() -> None:
    pred = torch.tensor([[0, 1, 2, 2]])
    target = torch.tensor([[0, 1, 1, 2]], dtype=torch.uint8)
    for t in (target, target.long()):
        cm = ConfusionMatrix(num_classes=3, ignore_index=1)
        cm.update(pred, t)
        assert cm.matrix.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_merge_refuses_other_label_sets() -> None:
    with pytest.raises(ValueError, match="num_classes=3"):
        ConfusionMatrix().merge(ConfusionMatrix(num_classes=3))


def test_per_scene_confusion_matches_separate_matrices() -> None:
    pred, target = random_batch(5, n=4)
    scenes = ["Urban", "Rural", "Rural", "Urban"]
    per_scene = PerSceneConfusion()
    per_scene.update(pred[:2], target[:2], scenes[:2])
    per_scene.update(pred[2:], target[2:], scenes[2:])
    per_scene.update(pred[0], target[0], "Urban")  # one tile, one scene name

    urban, rural, overall = ConfusionMatrix(), ConfusionMatrix(), ConfusionMatrix()
    urban.update(torch.cat([pred[[0, 3]], pred[:1]]), torch.cat([target[[0, 3]], target[:1]]))
    rural.update(pred[[1, 2]], target[[1, 2]])
    overall.update(torch.cat([pred, pred[:1]]), torch.cat([target, target[:1]]))

    assert list(per_scene.scenes) == ["urban", "rural"]
    assert torch.equal(per_scene.scenes["urban"].matrix, urban.matrix)
    assert torch.equal(per_scene.scenes["rural"].matrix, rural.matrix)
    assert torch.equal(per_scene.overall.matrix, overall.matrix)
    overall_scores, scene_scores = per_scene.compute()
    assert overall_scores == overall.compute()
    assert scene_scores["rural"] == rural.compute()
    assert scene_scores["urban"].miou != scene_scores["rural"].miou

    with pytest.raises(ValueError, match="scenes names 1 samples but the batch holds 2"):
        per_scene.update(pred[:2], target[:2], ["Urban"])
