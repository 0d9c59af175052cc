"""MMSeg 1.2.2's ``IoUMetric`` on our saved predictions gives our scores.

A small network is evaluated by :func:`loveda_utils.evaluation.loop.evaluate`, which saves its
predictions as PNGs and returns the scores a results record is made of. MMSeg's metric (as
its LoveDA config builds it) then reads those PNGs against the masks as MMSeg loads them
(``LoadAnnotations(reduce_zero_label=True)``): per-class IoU, mIoU and aAcc must agree, both
exactly (``total_area_to_metrics``) and as MMSeg reports them (percent, two decimals).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tree
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from loveda_utils.data.classes import CLASS_NAMES, NUM_CLASSES
from loveda_utils.data.datamodule import collate
from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.data.transforms import eval_transforms
from loveda_utils.evaluation.loop import evaluate, prediction_path


class TinyNet(nn.Module):
    """A seeded 5x5 convolution: predictions of every class, in patches, at no cost."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, NUM_CLASSES, 5, padding=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images.float() / 64.0)


def mmseg_scores(ref, dataset: LoveDASegmentation, predictions: Path, scene: str | None = None) -> tuple:
    """MMSeg's IoUMetric over the saved predictions of ``dataset`` (one ``scene``, or all)."""
    from mmseg.evaluation import IoUMetric

    metric = ref.build_metric(ref.loveda().val_evaluator)
    assert isinstance(metric, IoUMetric)
    metric.dataset_meta = {"classes": CLASS_NAMES}
    load = ref.build({"type": "LoadAnnotations", "reduce_zero_label": True})
    for files in dataset.files:
        image = Path(files["image"])
        if scene is not None and image.parent.parent.name.lower() != scene:
            continue
        saved = prediction_path(predictions, dataset.split_dir, image.parent.parent.name, image.name)
        pred = torch.from_numpy(np.array(Image.open(saved)).astype(np.int64) - 1)  # raw 1..7 -> 0..6
        gt = load({"seg_map_path": str(files["mask"]), "reduce_zero_label": True, "seg_fields": []})
        metric.process({}, [{"pred_sem_seg": {"data": pred[None]},
                             "gt_sem_seg": {"data": torch.from_numpy(gt["gt_seg_map"])[None]}}])
    reported = metric.compute_metrics(metric.results)
    areas = [sum(column) for column in zip(*metric.results, strict=True)]
    exact = IoUMetric.total_area_to_metrics(*areas, metrics=["mIoU"])
    return reported, {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in exact.items()}


#: MMSeg counts pixels in float32 (``torch.histc``) and divides in float32; ours are int64 counts
#: and float64 ratios. The scores agree to float32's precision.
FLOAT32 = 1e-6


def check(ref, scores, dataset, predictions: Path, scene: str | None = None) -> None:
    reported, exact = mmseg_scores(ref, dataset, predictions, scene)
    ours_iou = np.array([np.nan if v is None else v for v in scores.per_class_iou.values()])
    np.testing.assert_allclose(ours_iou, exact["IoU"], rtol=FLOAT32, atol=0)
    assert math.isclose(scores.miou, float(np.nanmean(exact["IoU"])), rel_tol=FLOAT32)
    assert math.isclose(scores.accuracy, float(exact["aAcc"]), rel_tol=FLOAT32)
    assert reported["mIoU"] == round(100 * scores.miou, 2)
    assert reported["aAcc"] == round(100 * scores.accuracy, 2)
    assert reported["mAcc"] == round(100 * scores.mean_accuracy, 2)


def evaluate_and_save(dataset: LoveDASegmentation, out: Path):
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
    return evaluate(TinyNet(), loader, save_predictions_dir=out, channels_last=False)


def test_mmseg_iou_metric_on_real_tiles(mmseg_ref, loveda_tiles, tmp_path) -> None:
    dataset = LoveDASegmentation(loveda_tiles, "train", "rural", eval_transforms())
    result = evaluate_and_save(dataset, tmp_path / "predictions")
    assert result.n_scored == len(dataset) and result.scores is not None
    present = [v for v in result.scores.per_class_iou.values() if v is not None]
    assert len(present) >= 4, "the tiny network should predict several classes"
    check(mmseg_ref, result.scores, dataset, tmp_path / "predictions")


def test_mmseg_iou_metric_on_generated_tiles_per_scene(mmseg_ref, tmp_path) -> None:
    root = write_tree(tmp_path / "loveda", splits=("Val",), n=3, size=96, seed=7)
    dataset = LoveDASegmentation(root, "val", "both", eval_transforms())
    result = evaluate_and_save(dataset, tmp_path / "predictions")
    check(mmseg_ref, result.scores, dataset, tmp_path / "predictions")
    for scene, scores in result.per_scene.items():
        check(mmseg_ref, scores, dataset, tmp_path / "predictions", scene)


@pytest.mark.parametrize("absent", [True, False])
def test_mmseg_iou_metric_on_a_class_absent_from_both(mmseg_ref, absent: bool) -> None:
    """Classes in neither prediction nor ground truth are NaN for MMSeg and left out of the mean."""
    from loveda_utils.evaluation.metrics import scores_from_confusion

    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    confusion[0, 0], confusion[1, 2], confusion[2, 2], confusion[3, 3] = 50, 7, 20, 0 if absent else 4
    scores = scores_from_confusion(confusion)
    from mmseg.evaluation import IoUMetric

    exact = IoUMetric.total_area_to_metrics(
        torch.diag(confusion), confusion.sum(0) + confusion.sum(1) - torch.diag(confusion),
        confusion.sum(0), confusion.sum(1), metrics=["mIoU"])
    ours = np.array([np.nan if v is None else v for v in scores.per_class_iou.values()])
    np.testing.assert_allclose(ours, exact["IoU"], rtol=FLOAT32, atol=0)
    assert math.isclose(scores.miou, float(np.nanmean(exact["IoU"])), rel_tol=FLOAT32)
