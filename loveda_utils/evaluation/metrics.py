"""Segmentation metrics under MMSeg's protocol: one confusion matrix, then IoU/acc/F1.

The benchmark accumulates a single ``[C, C]`` confusion matrix (rows = ground truth,
columns = prediction) over every evaluated pixel of a split, no-data excluded, and derives
every score from it, exactly as MMSeg's ``IoUMetric`` does:

- ``IoU_c = TP / (TP + FP + FN)``; a class whose union is 0 (absent from both prediction
  and ground truth) has no IoU and is left out of the mean (nanmean). Such classes are
  reported as ``None`` in the per-class dicts, so records stay valid JSON.
- ``accuracy`` (MMSeg's ``aAcc``) = correct pixels / evaluated pixels; ``mean_accuracy``
  (``mAcc``) = nanmean over classes present in the ground truth of ``TP / (TP + FN)``.
- ``F1_c = 2 TP / (2 TP + FP + FN)`` (MMSeg's ``mDice``), defined where the union is > 0.
  MMSeg's ``mFscore`` computes the same number from precision and recall but turns a class
  that is never predicted into NaN (0/0 precision) where this gives 0, as torchmetrics does.

All scores are fractions in ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, SCENES

__all__ = [
    "ConfusionMatrix",
    "PerSceneConfusion",
    "SegmentationScores",
    "all_reduce_counts",
    "scores_from_confusion",
    "torchmetrics_scores",
]


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass
class SegmentationScores:
    """Scores derived from one confusion matrix; fractions in ``[0, 1]``.

    Per-class values are ``None`` where undefined (IoU and F1: the class is absent from both
    prediction and ground truth; accuracy: absent from the ground truth). Means skip those
    classes (MMSeg's nanmean) and are NaN only when no pixel was evaluated.
    """

    miou: float
    per_class_iou: dict[str, float | None]
    accuracy: float
    mean_accuracy: float
    per_class_accuracy: dict[str, float | None]
    per_class_f1: dict[str, float | None]
    mean_f1: float
    n_pixels: int
    class_names: tuple[str, ...] = field(default=CLASS_NAMES, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (NaN means become ``None``)."""
        return {
            "miou": _none_if_nan(self.miou),
            "per_class_iou": dict(self.per_class_iou),
            "accuracy": _none_if_nan(self.accuracy),
            "mean_accuracy": _none_if_nan(self.mean_accuracy),
            "per_class_accuracy": dict(self.per_class_accuracy),
            "per_class_f1": dict(self.per_class_f1),
            "mean_f1": _none_if_nan(self.mean_f1),
            "n_pixels": int(self.n_pixels),
        }


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def scores_from_confusion(
    matrix: torch.Tensor | np.ndarray, class_names: Sequence[str] = CLASS_NAMES
) -> SegmentationScores:
    """Compute :class:`SegmentationScores` from a ``[C, C]`` confusion matrix.

    Args:
        matrix: counts, rows = ground truth, columns = prediction (any device, any
            integer or float dtype).
        class_names: one name per class, in label order.

    Raises:
        ValueError: if ``matrix`` is not square, does not match ``class_names`` or holds
            negative counts.
    """
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    counts = np.asarray(matrix, dtype=np.float64)
    class_names = tuple(class_names)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(
            f"matrix must be a square [C, C] confusion matrix, got shape {counts.shape}"
        )
    if counts.shape[0] != len(class_names):
        raise ValueError(
            f"matrix is {counts.shape[0]}x{counts.shape[1]} but class_names has "
            f"{len(class_names)} names; pass one name per class"
        )
    if (counts < 0).any():
        raise ValueError("matrix holds negative counts; it is not a confusion matrix")

    tp = np.diag(counts)
    area_label = counts.sum(axis=1)  # ground-truth pixels per class (TP + FN)
    area_pred = counts.sum(axis=0)  # predicted pixels per class (TP + FP)
    union = area_label + area_pred - tp
    total = counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(area_label > 0, tp / area_label, np.nan)
        f1 = np.where(union > 0, 2 * tp / (area_label + area_pred), np.nan)
    return SegmentationScores(
        miou=_nanmean(iou),
        per_class_iou={n: _none_if_nan(v) for n, v in zip(class_names, iou, strict=True)},
        accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
        mean_accuracy=_nanmean(acc),
        per_class_accuracy={n: _none_if_nan(v) for n, v in zip(class_names, acc, strict=True)},
        per_class_f1={n: _none_if_nan(v) for n, v in zip(class_names, f1, strict=True)},
        mean_f1=_nanmean(f1),
        n_pixels=int(total),
        class_names=class_names,
    )


def _check_labels(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Check dtypes, shapes and devices of a prediction/target pair."""
    for arg, tensor in (("pred", pred), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{arg} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
            hint = " (take logits.argmax(dim=1) first)" if arg == "pred" else ""
            raise ValueError(
                f"{arg} must hold integer class labels, got dtype {tensor.dtype}{hint}"
            )
    if pred.shape != target.shape or pred.ndim not in (2, 3):
        raise ValueError(
            "pred and target must both be [B, H, W] or [H, W] with equal shapes, got "
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    if pred.device != target.device:
        raise ValueError(
            f"pred is on {pred.device} but target on {target.device}; move both to one device"
        )


def _confusion_counts(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int,
    groups: torch.Tensor | None = None,
    num_groups: int = 1,
    validate: bool = True,
) -> torch.Tensor:
    """Count ``(group, target, pred)`` triples with one ``torch.bincount``: ``[G, C, C]`` int64.

    ``groups`` (``[B]`` long, optional) assigns each sample of a batch to a group (a scene), so
    per-scene matrices cost no extra pass over the pixels.

    A pixel's bin is ``target * C + pred`` over every value its target can hold: a uint8 target
    (the data contract) has 256 rows of bins, so ignored pixels and invalid targets fall into
    rows of their own and are dropped or reported from the counts afterwards. No masking pass,
    no copy of the target (what that saves: ``benchmarks/RESULTS.md``, "What each optimisation
    was worth"). Other integer targets are range-checked and their ignored
    pixels moved to an extra row first (one more pass, off the contract's path).

    ``validate=False`` trusts ``pred`` to hold labels in ``0..C-1`` (an ``argmax``): an
    out-of-range label would then be counted in a neighbouring bin instead of raising.
    """
    _check_labels(pred, target)
    if validate:  # one pass and one host sync
        low, high = (int(v) for v in torch.aminmax(pred))
        if low < 0 or high >= num_classes:
            values = torch.unique(pred[(pred < 0) | (pred >= num_classes)]).tolist()[:10]
            raise ValueError(
                f"pred holds labels {values} outside 0..{num_classes - 1} "
                f"(num_classes={num_classes})"
            )
    if target.dtype == torch.uint8:
        rows, counted_invalid = max(256, num_classes), True
        ignore_row = ignore_index if 0 <= ignore_index < 256 else None
        index = pred.to(torch.int32, copy=True).add_(target, alpha=num_classes)
    else:
        bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
        if bool(bad.any()):
            _raise_bad_target(torch.unique(target[bad]).tolist(), num_classes, ignore_index)
        rows, ignore_row, counted_invalid = num_classes + 1, num_classes, False
        target = torch.where(target == ignore_index, num_classes, target.long())
        index = pred.long().add(target, alpha=num_classes)
    size = rows * num_classes
    if groups is not None:
        if pred.ndim != 3 or groups.shape != (pred.shape[0],):
            raise ValueError(
                f"groups must be [B] for a [B, H, W] batch, got groups {tuple(groups.shape)} "
                f"and pred {tuple(pred.shape)}"
            )
        index = index.add_(groups.to(index).view(-1, 1, 1) * size)
    counts = torch.bincount(index.reshape(-1), minlength=num_groups * size)
    counts = counts.view(num_groups, rows, num_classes)
    if counted_invalid:  # invalid uint8 targets have rows of their own: report them
        per_row = counts.sum(dim=(0, 2))
        per_row[:num_classes] = 0
        if ignore_row is not None:
            per_row[ignore_row] = 0
        if bool(per_row.any()):  # one host sync (CUDA's bincount syncs anyway)
            _raise_bad_target(torch.nonzero(per_row).flatten().tolist(), num_classes, ignore_index)
    matrix = counts[:, :num_classes, :]
    if ignore_row is not None and ignore_row < num_classes:  # an ignore index that is a class
        matrix = matrix.clone()
        matrix[:, ignore_row, :] = 0
    return matrix


def _raise_bad_target(values: list[int], num_classes: int, ignore_index: int) -> None:
    raise ValueError(
        f"target holds labels {values[:10]} outside 0..{num_classes - 1} that are not "
        f"ignore_index={ignore_index}; map raw LoveDA masks with classes.raw_to_train"
    )


class ConfusionMatrix:
    """A ``[C, C]`` int64 confusion matrix (rows = ground truth, cols = prediction).

    The matrix lives on the device of the inputs (it follows the first update), so a GPU
    evaluation never copies labels to the host. Pixels whose target is ``ignore_index`` are
    not counted.

    Args:
        num_classes: number of classes ``C``.
        ignore_index: target value that is skipped (LoveDA no-data).
        class_names: names used by :meth:`compute`.
        device: where the matrix starts; it moves to the inputs' device on update.
        validate: check that ``pred`` labels are in range on every update (one pass and one
            host sync per batch; off for labels from an argmax). Targets are always checked.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
        device: torch.device | str | None = None,
        validate: bool = True,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is None:
            class_names = (
                CLASS_NAMES
                if num_classes == NUM_CLASSES
                else tuple(f"class_{i}" for i in range(num_classes))
            )
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes={num_classes}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names)
        self.validate = validate
        self._matrix = torch.zeros(
            (num_classes, num_classes), dtype=torch.int64, device=device or "cpu"
        )

    @property
    def matrix(self) -> torch.Tensor:
        """The accumulated ``[C, C]`` int64 counts."""
        return self._matrix

    @property
    def device(self) -> torch.device:
        return self._matrix.device

    def _follow(self, device: torch.device) -> None:
        if self._matrix.device != device:
            self._matrix = self._matrix.to(device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` labels ``[B, H, W]`` or ``[H, W]``, ``target`` the same shape
        (uint8 or long, ``ignore_index`` = not counted)."""
        counts = _confusion_counts(
            pred, target, self.num_classes, self.ignore_index, validate=self.validate
        )
        self._follow(counts.device)
        self._matrix += counts[0]

    def add_counts(self, counts: torch.Tensor) -> None:
        """Add a ``[C, C]`` matrix of counts computed elsewhere."""
        if counts.shape != self._matrix.shape:
            raise ValueError(
                f"counts must be {tuple(self._matrix.shape)}, got {tuple(counts.shape)}"
            )
        self._matrix += counts.to(device=self._matrix.device, dtype=torch.int64)

    def reset(self) -> None:
        """Zero the counts (the device is kept)."""
        self._matrix.zero_()

    def _check_compatible(self, other: ConfusionMatrix) -> None:
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, got {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a matrix with num_classes={other.num_classes}, "
                f"ignore_index={other.ignore_index} into one with num_classes={self.num_classes}, "
                f"ignore_index={self.ignore_index}"
            )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (in place); returns ``self``."""
        self._check_compatible(other)
        self.add_counts(other.matrix)
        return self

    def copy(self) -> ConfusionMatrix:
        new = ConfusionMatrix(
            self.num_classes, self.ignore_index, self.class_names, self.device, self.validate
        )
        new._matrix = self._matrix.clone()
        return new

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.copy().merge(other)

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def compute(self) -> SegmentationScores:
        """Scores of the counts so far (see :func:`scores_from_confusion`)."""
        return scores_from_confusion(self._matrix, self.class_names)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"n_pixels={int(self._matrix.sum())}, device={self.device})"
        )


def all_reduce_counts(counts: torch.Tensor) -> torch.Tensor:
    """``counts`` summed over the processes of the default process group (DDP ranks), exactly.

    The sum is taken in int64, which gloo and NCCL reduce as integers: float32 holds whole
    numbers exactly only up to ``2**24`` (16.8M pixels, 16 LoveDA tiles of one class). Without a
    process group (or with one process) the counts come back as they are.

    Raises:
        ValueError: for floating-point counts (they may already have lost pixels).
    """
    if counts.is_floating_point() or counts.is_complex():
        raise ValueError(f"counts must be an integer tensor, got dtype {counts.dtype}")
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return counts
    if torch.distributed.get_world_size() == 1:
        return counts
    total = counts.to(torch.int64, copy=True)
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total


def _scene_key(scene: str) -> str:
    return str(scene).lower()


class PerSceneConfusion:
    """Confusion matrices per scene (keys lower-case: ``"urban"``, ``"rural"``) plus the overall.

    One ``torch.bincount`` per update serves every scene of the batch and the overall matrix
    (the sample's scene is folded into the bin index).

    Args: those of :class:`ConfusionMatrix` (every scene's matrix shares them).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.overall = ConfusionMatrix(*args, **kwargs)
        self.scenes: dict[str, ConfusionMatrix] = {}

    @property
    def num_classes(self) -> int:
        return self.overall.num_classes

    def _scene_matrix(self, key: str) -> ConfusionMatrix:
        if key not in self.scenes:
            o = self.overall
            self.scenes[key] = ConfusionMatrix(o.num_classes, o.ignore_index, o.class_names,
                                               o.device, o.validate)
            # Keep the archive's order (urban, rural), then any other scene names.
            order = [s.lower() for s in SCENES]
            self.scenes = dict(
                sorted(
                    self.scenes.items(),
                    key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]),
                )
            )
        return self.scenes[key]

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, scenes: str | Sequence[str] | None
    ) -> None:
        """Add a batch ``[B, H, W]`` (or one ``[H, W]`` tile); ``scenes`` names each sample's
        scene (one str for the whole batch, or a list of ``B``). ``None`` counts the batch in
        the overall matrix only."""
        o = self.overall
        if scenes is None:
            o.update(pred, target)
            return
        if pred.ndim == 2:
            pred, target = pred.unsqueeze(0), target.unsqueeze(0)
        if isinstance(scenes, str):
            scenes = [scenes] * pred.shape[0]
        keys = [_scene_key(s) for s in scenes]
        if len(keys) != pred.shape[0]:
            raise ValueError(
                f"scenes names {len(keys)} samples but the batch holds {pred.shape[0]}"
            )
        unique = list(dict.fromkeys(keys))
        groups = torch.tensor([unique.index(k) for k in keys], dtype=torch.long)
        counts = _confusion_counts(
            pred, target, o.num_classes, o.ignore_index, groups, len(unique), o.validate
        )
        o._follow(counts.device)
        o._matrix += counts.sum(0)
        for g, key in enumerate(unique):
            matrix = self._scene_matrix(key)
            matrix._follow(counts.device)
            matrix._matrix += counts[g]

    def reset(self) -> None:
        """Zero the overall counts and forget the scenes."""
        self.overall.reset()
        self.scenes = {}

    def merge(self, other: PerSceneConfusion) -> PerSceneConfusion:
        """Add ``other``'s counts (overall and per scene) into this one; returns ``self``."""
        self.overall.merge(other.overall)
        for key, matrix in other.scenes.items():
            self._scene_matrix(key).merge(matrix)
        return self

    def compute(self) -> tuple[SegmentationScores, dict[str, SegmentationScores]]:
        """``(overall scores, {scene: scores})``."""
        return self.overall.compute(), {k: m.compute() for k, m in self.scenes.items()}

    def matrices(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(overall matrix, {scene: matrix})`` as CPU tensors."""
        return self.overall.matrix.cpu(), {k: m.matrix.cpu() for k, m in self.scenes.items()}


def torchmetrics_scores(
    preds: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> Mapping[str, torch.Tensor]:
    """Independent scores from ``torchmetrics``, to cross-check :class:`ConfusionMatrix`.

    Returns per-class ``"iou"`` (``MulticlassJaccardIndex(average="none")``), per-class
    ``"f1"`` (``MulticlassF1Score(average="none")``) and the overall pixel ``"accuracy"``
    (``MulticlassAccuracy(average="micro")``), all ignoring ``ignore_index``.

    Compare per class, where the union is > 0 only: torchmetrics scores a class absent from
    both prediction and target as 0 (its ``zero_division``), and its ``average="macro"`` then
    averages that 0 in, where MMSeg (and :func:`scores_from_confusion`) leaves the class out.
    torchmetrics computes in float32, so agreement is to ~1e-6, not bit-exact.
    """
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassF1Score,
        MulticlassJaccardIndex,
    )

    n, ignore = num_classes, ignore_index
    preds, targets = preds.long(), targets.long()
    metrics = {
        "iou": MulticlassJaccardIndex(num_classes=n, ignore_index=ignore, average="none"),
        "f1": MulticlassF1Score(num_classes=n, ignore_index=ignore, average="none"),
        "accuracy": MulticlassAccuracy(num_classes=n, ignore_index=ignore, average="micro"),
    }
    return {name: m.to(preds.device)(preds, targets) for name, m in metrics.items()}
