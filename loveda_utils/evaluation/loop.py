"""The evaluation loop: every batch of a loader predicted, counted and (optionally) saved.

:func:`evaluate` runs a model over a loader under MMSeg's protocol: each batch predicted by
:mod:`loveda_utils.evaluation.inference` (whole, sliding window, ms+flip), reduced to labels
on the device, counted into per-tile confusion matrices
(:class:`~loveda_utils.evaluation.per_tile.PerTileConfusion`) and dropped, so that memory does
not grow with the number of tiles; predictions are written as PNG on request
(:func:`prediction_path`). The result, :class:`EvaluationResult`, holds matrices and scores only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.classes import (
    CLASS_NAMES,
    NUM_CLASSES,
    normalize_scenes,
    normalize_split,
    train_to_raw,
)
from ..files import atomic_output
from ..runtime import amp_dtype, autocast, channels_last_for, synchronize
from .inference import MS_FLIP_SCALES, Mode, Model, labels_from_logits, predict, predict_ms_flip
from .metrics import SegmentationScores, scores_from_confusion
from .per_tile import PerTileConfusion, TileConfusions, tile_names

__all__ = ["EvaluationResult", "evaluate", "prediction_path"]


def prediction_path(root: str | os.PathLike[str], split: str, scene: str, name: str) -> Path:
    """``<root>/<Split>/<Scene>/<name>.png``, the layout of saved predictions."""
    split = normalize_split(split)
    scene = normalize_scenes(scene)[0]
    stem = Path(str(name)).name  # a name is a file name, never a path
    if not stem or stem in (".", ".."):
        raise ValueError(f"name={name!r} is not an image file name")
    return Path(root) / split / scene / (Path(stem).stem + ".png")


def _save_png(labels: np.ndarray, path: Path) -> None:
    """Write a uint8 ``[H, W]`` array as a single-channel PNG, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, durable=False) as handle:
        Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8)).save(handle, format="PNG")


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns. Holds fixed-size matrices only, never predictions.

    Attributes:
        scores: overall scores, ``None`` when no batch had a mask (e.g. the Test split).
        per_scene: scene (lower-case ``"urban"``/``"rural"``) -> scores.
        n_images: images predicted; ``n_scored`` of them had a mask.
        confusion: overall ``[C, C]`` int64 matrix (CPU); ``per_scene_confusion`` per scene.
        tiles: each scored tile's ``[C, C]`` matrix (49 counts per tile), named
            ``<Split>/<Scene>/<file name>``; they sum to ``confusion`` exactly.
        seconds: wall time of the loop (data loading included, device synchronised).
        predictions_dir: where predictions were saved, if they were.
    """

    scores: SegmentationScores | None
    per_scene: dict[str, SegmentationScores]
    n_images: int
    n_scored: int
    confusion: torch.Tensor
    per_scene_confusion: dict[str, torch.Tensor]
    seconds: float
    predictions_dir: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    tiles: TileConfusions = field(default_factory=TileConfusions.empty)

    @property
    def miou(self) -> float | None:
        return None if self.scores is None else self.scores.miou

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (scores as fractions, matrices as nested lists)."""
        return {
            "scores": None if self.scores is None else self.scores.to_dict(),
            "per_scene": {k: v.to_dict() for k, v in self.per_scene.items()},
            "per_scene_miou": {k: v.to_dict()["miou"] for k, v in self.per_scene.items()},
            "n_images": self.n_images,
            "n_scored": self.n_scored,
            "confusion": self.confusion.tolist(),
            "per_scene_confusion": {k: v.tolist() for k, v in self.per_scene_confusion.items()},
            "seconds": self.seconds,
            "predictions_dir": None if self.predictions_dir is None else str(self.predictions_dir),
            "settings": dict(self.settings),
        }


def _model_device(model: Model) -> torch.device | None:
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return None


def _is_channels_last(model: nn.Module) -> bool:
    """Whether every spatial 4-D weight of ``model`` is stored channels-last already."""
    weights = [p for p in model.parameters() if p.ndim == 4 and p.shape[-2:].numel() > 1]
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def _as_list(value: Any, n: int, key: str) -> list[Any] | None:
    """A batched metadata field as a list of ``n`` items (a str is shared by the batch)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        return [value] * n
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    items = list(value)
    if len(items) < n:
        raise ValueError(f"batch[{key!r}] has {len(items)} entries for a batch of {n} images")
    return items[:n]


def _progress(iterable: Iterable[Any], enabled: bool, total: int | None) -> Iterable[Any]:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm ships with lightning; without it, run silently
        return iterable
    return tqdm(iterable, total=total, desc="evaluate", unit="batch")


def evaluate(
    model: Model,
    dataloader: Iterable[Mapping[str, Any]],
    *,
    device: torch.device | str | None = None,
    ms_flip: bool = False,
    scales: Sequence[float] = MS_FLIP_SCALES,
    flip: bool = True,
    mode: Mode = "whole",
    window: int | Sequence[int] = 1024,
    stride: int | Sequence[int] = 768,
    amp: bool | torch.dtype = False,
    channels_last: bool | None = None,
    limit_images: int | None = None,
    save_predictions_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    num_classes: int = NUM_CLASSES,
    class_names: Sequence[str] = CLASS_NAMES,
) -> EvaluationResult:
    """Predict every batch of ``dataloader`` and score it under MMSeg's protocol.

    Batches are dicts as in docs/CONTRACTS.md (``image`` uint8 ``[B, 3, H, W]``, ``mask``
    uint8 ``[B, H, W]`` with 255 = ignore, ``scene``, ``split``, ``name``). Batches without
    ``mask`` (the Test split) are predicted and saved but not scored. Predictions are reduced
    to labels on the device, counted into overall and per-scene confusion matrices on the
    device, and dropped: memory does not grow with the number of tiles.

    Args:
        model: ``images -> logits`` (see docs/CONTRACTS.md); put in eval mode for the call.
        dataloader: an iterable of batch dicts.
        device: where to run; an ``nn.Module`` is moved there. Default: the device of the
            model's parameters (CPU for a callable without any).
        ms_flip: multi-scale + flip test-time augmentation (``scales``, ``flip``).
        mode: ``"whole"`` or ``"slide"`` (with ``window`` and ``stride``) for each pass.
        amp: autocast, an explicit choice: ``False`` (default): fp32, the protocol the table's
            mIoU follows on every device; ``True``: the runtime's AMP dtype
            (:func:`loveda_utils.runtime.amp_dtype`: bf16 where native, else fp16 on CUDA);
            a dtype: that one. ``settings["amp"]`` of the result says which ran.
        channels_last: run the model and the images in channels-last memory format (the
            model is converted for the call and converted back after). ``None``: on for the
            CPU (oneDNN's faster convolutions, see benchmarks/RESULTS.md) and for CUDA
            under AMP (tensor cores); off otherwise.
        limit_images: stop after this many images (the last batch is cut).
        save_predictions_dir: write each prediction as PNG (raw LoveDA values 1..7) to
            ``<dir>/<Split>/<Scene>/<name>``.
        progress: show a tqdm progress bar.
        num_classes, class_names: the label set (LoveDA's by default).

    Returns:
        :class:`EvaluationResult`.
    """
    if limit_images is not None and (not isinstance(limit_images, int) or limit_images < 1):
        raise ValueError(f"limit_images must be a positive int or None, got {limit_images!r}")
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if device is not None:
        device = torch.device(device)
        if isinstance(model, nn.Module):
            model.to(device)
    else:
        # A callable without parameters may hold its weights anywhere; the CPU is where
        # batches come from, so it is the one guess that cannot mismatch the inputs.
        device = _model_device(model) or torch.device("cpu")
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but num_classes={num_classes}")
    save_dir = Path(save_predictions_dir) if save_predictions_dir is not None else None
    autocast_dtype = amp_dtype(device, amp)
    if channels_last is None:
        channels_last = channels_last_for(device, autocast_dtype)
    # Converted for the call only (like eval mode): the caller's model comes back as it was.
    convert = channels_last and isinstance(model, nn.Module) and not _is_channels_last(model)
    if convert:
        model.to(memory_format=torch.channels_last)  # type: ignore[union-attr]

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    # Labels come from an argmax (always in range): no range check, only the targets'.
    confusion = PerTileConfusion(
        num_classes, class_names=class_names, device=device, validate=False
    )
    n_images = n_scored = 0

    def run_batch(batch: Mapping[str, Any], take: int) -> int:
        """Predict, score and save one batch; returns how many images had a mask.

        A function of its own so that nothing of the batch (logits, labels) outlives it.
        """
        images = batch["image"][:take]
        # The layout the model runs in, whatever the loader delivered (a no-op when it matches).
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with autocast(device, autocast_dtype):
            if ms_flip:
                out = predict_ms_flip(
                    model, images, scales, flip, mode, window, stride, num_classes
                )
            else:
                out = predict(model, images, mode, window, stride, num_classes)
        labels = labels_from_logits(out)
        del out
        scenes = _as_list(batch.get("scene"), take, "scene")
        splits = _as_list(batch.get("split"), take, "split")
        names = _as_list(batch.get("name"), take, "name")
        mask = batch.get("mask")
        if mask is not None:
            target = mask[:take].to(device, non_blocking=True)
            if target.shape != labels.shape:
                raise ValueError(
                    f"batch['mask'] has shape {tuple(target.shape)} but the predictions "
                    f"{tuple(labels.shape)}; masks must be [B, H, W] at the image size"
                )
            tiles = tile_names(splits, scenes, names, first=n_scored, n=take)
            confusion.update(labels, target, scenes, tiles)
        if save_dir is not None:
            if splits is None or scenes is None or names is None:
                raise ValueError(
                    "save_predictions_dir needs 'split', 'scene' and 'name' in every batch "
                    "(see docs/CONTRACTS.md); this batch has keys " + ", ".join(sorted(batch))
                )
            raw = train_to_raw(labels.to(torch.uint8).cpu())
            assert isinstance(raw, torch.Tensor)  # a tensor in, a tensor out
            raw = raw.numpy()
            for array, split, scene, name in zip(raw, splits, scenes, names, strict=True):
                _save_png(array, prediction_path(save_dir, split, scene, name))
        return 0 if mask is None else take

    try:
        total: int | None = len(dataloader)  # type: ignore[arg-type]
    except TypeError:  # an iterable (or IterableDataset loader) without a length
        total = None
    try:
        with torch.inference_mode():
            synchronize(device)
            start = time.perf_counter()
            for batch in _progress(dataloader, progress, total):
                if "image" not in batch:
                    raise ValueError(
                        "every batch needs an 'image' tensor [B, 3, H, W] (see "
                        f"docs/CONTRACTS.md); got keys {', '.join(sorted(batch))}"
                    )
                take = batch["image"].shape[0]
                if limit_images is not None:
                    take = min(take, limit_images - n_images)
                n_scored += run_batch(batch, take)
                n_images += take
                if limit_images is not None and n_images >= limit_images:
                    break
            synchronize(device)
            seconds = time.perf_counter() - start
    finally:
        if was_training:
            model.train()  # type: ignore[union-attr]
        if convert:
            model.to(memory_format=torch.contiguous_format)  # type: ignore[union-attr]

    matrix, scene_matrices = confusion.matrices()
    names = tuple(class_names)
    return EvaluationResult(
        scores=scores_from_confusion(matrix, names) if n_scored else None,
        per_scene={k: scores_from_confusion(m, names) for k, m in scene_matrices.items()},
        n_images=n_images,
        n_scored=n_scored,
        confusion=matrix,
        per_scene_confusion=scene_matrices,
        seconds=seconds,
        predictions_dir=save_dir,
        tiles=confusion.tiles(),
        settings={
            "mode": mode,
            "ms_flip": ms_flip,
            "scales": list(scales) if ms_flip else [1.0],
            "flip": flip if ms_flip else False,
            "window": window if mode == "slide" else None,
            "stride": stride if mode == "slide" else None,
            "amp": None if autocast_dtype is None else str(autocast_dtype).removeprefix("torch."),
            "channels_last": bool(channels_last),
            "device": str(device),
        },
    )
