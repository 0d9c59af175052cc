"""Whole-image, sliding-window and multi-scale + flip inference, and the evaluation loop.

Follows MMSeg's test-time behaviour so numbers compare with their model zoo:

- ``whole``: the full tile in one forward pass (the LoveDA configs' ``mode="whole"``).
- ``slide``: overlapping ``window`` crops every ``stride`` pixels, logits summed and divided by
  how many crops cover each pixel (MMSeg's ``slide_inference``). A tile no larger than the
  window is a single crop, i.e. exactly whole-tile inference.
- ``ms+flip``: per scale, the image is resized (bilinear, ``align_corners=False``) to
  ``int(H * scale + 0.5)`` (mmcv's rounding), predicted, the logits are resized back to the
  original size and turned into softmax probabilities (MMSeg's order: resize, then softmax);
  with ``flip`` the horizontally flipped image as well (its output flipped back). The
  probabilities of all passes are averaged.

Models follow docs/CONTRACTS.md: ``model(images)`` with images uint8/float 0..255
``[B, 3, H, W]`` returns logits ``[B, C, H, W]`` at the input resolution.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
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
from .metrics import SegmentationScores, scores_from_confusion
from .per_tile import PerTileConfusion, TileConfusions, tile_names

__all__ = [
    "MS_FLIP_SCALES",
    "EvaluationResult",
    "evaluate",
    "labels_from_logits",
    "predict",
    "predict_ms_flip",
    "predict_slide",
    "predict_whole",
    "prediction_path",
]

#: MMSeg's multi-scale test ratios for LoveDA (``img_ratios`` of its ``aug_test``).
MS_FLIP_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

Model = nn.Module | Callable[[torch.Tensor], torch.Tensor]
Mode = Literal["whole", "slide"]


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got {shape}")


def _check_logits(logits: torch.Tensor, images: torch.Tensor, num_classes: int | None) -> None:
    b, _, h, w = images.shape
    if (
        not isinstance(logits, torch.Tensor)
        or logits.ndim != 4
        or logits.shape[0] != b
        or tuple(logits.shape[2:]) != (h, w)
        or (num_classes is not None and logits.shape[1] != num_classes)
    ):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        want = f"[{b}, {num_classes if num_classes is not None else 'C'}, {h}, {w}]"
        raise ValueError(
            f"the model returned {shape} for images {tuple(images.shape)}; expected logits "
            f"{want} at the input resolution (see docs/CONTRACTS.md)"
        )


def predict_whole(
    model: Model, images: torch.Tensor, num_classes: int | None = None
) -> torch.Tensor:
    """Whole-tile inference: ``model(images)``, checked to be logits ``[B, C, H, W]``."""
    _check_images(images)
    logits = model(images)
    _check_logits(logits, images, num_classes)
    return logits


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return pair


def predict_slide(
    model: Model,
    images: torch.Tensor,
    window: int | Sequence[int],
    stride: int | Sequence[int],
    num_classes: int = NUM_CLASSES,
) -> torch.Tensor:
    """Sliding-window inference (MMSeg's ``slide_inference``): float32 logits ``[B, C, H, W]``.

    Crops of ``window`` pixels start every ``stride`` pixels; the last crop of a row/column is
    shifted back to end at the border. Each pixel gets the mean of the logits of the crops
    covering it. Where the tile is smaller than the window, the crop is the whole tile
    (no padding), so a small tile gives exactly whole-tile inference.

    Raises:
        ValueError: if ``stride`` exceeds ``window`` (pixels would be left uncovered).
    """
    _check_images(images)
    win_h, win_w = _pair(window, "window")
    str_h, str_w = _pair(stride, "stride")
    if str_h > win_h or str_w > win_w:
        raise ValueError(
            f"stride {(str_h, str_w)} is larger than window {(win_h, win_w)}: "
            "pixels between windows would never be predicted; use stride <= window"
        )
    b, _, h, w = images.shape
    rows = max(h - win_h + str_h - 1, 0) // str_h + 1
    cols = max(w - win_w + str_w - 1, 0) // str_w + 1
    # Summed in float32 even under autocast: many bf16 additions would lose precision.
    logits = torch.zeros((b, num_classes, h, w), dtype=torch.float32, device=images.device)
    count = torch.zeros((1, 1, h, w), dtype=torch.float32, device=images.device)
    for row in range(rows):
        for col in range(cols):
            y2 = min(row * str_h + win_h, h)
            x2 = min(col * str_w + win_w, w)
            y1, x1 = max(y2 - win_h, 0), max(x2 - win_w, 0)
            crop = images[:, :, y1:y2, x1:x2]
            logits[:, :, y1:y2, x1:x2] += predict_whole(model, crop, num_classes).float()
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def predict(
    model: Model,
    images: torch.Tensor,
    mode: Mode = "whole",
    window: int | Sequence[int] = 1024,
    stride: int | Sequence[int] = 768,
    num_classes: int = NUM_CLASSES,
) -> torch.Tensor:
    """Logits ``[B, C, H, W]`` by ``mode`` ``"whole"`` or ``"slide"``."""
    if mode == "whole":
        return predict_whole(model, images, num_classes)
    if mode == "slide":
        return predict_slide(model, images, window, stride, num_classes)
    raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def predict_ms_flip(
    model: Model,
    images: torch.Tensor,
    scales: Sequence[float] = MS_FLIP_SCALES,
    flip: bool = True,
    mode: Mode = "whole",
    window: int | Sequence[int] = 1024,
    stride: int | Sequence[int] = 768,
    num_classes: int = NUM_CLASSES,
) -> torch.Tensor:
    """Multi-scale (+ flip) test-time augmentation: mean softmax probabilities ``[B, C, H, W]``.

    See the module docstring for the exact recipe (MMSeg's ``aug_test``). Images are resized
    in float32 (uint8 cannot be interpolated); the result is float32 at the input resolution.
    """
    _check_images(images)
    scales = tuple(float(s) for s in scales)
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive ratios, got {scales}")
    b, _, h, w = images.shape
    size = (h, w)
    floats = images.float()
    probs = torch.zeros((b, num_classes, h, w), dtype=torch.float32, device=images.device)
    passes = 0
    for scale in scales:
        scaled_size = (max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1))
        scaled = images if scaled_size == size else _resize(floats, scaled_size)
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            logits = predict(model, x, mode, window, stride, num_classes).float()
            if flipped:
                logits = logits.flip(-1)
            probs += _resize(logits, size).softmax(dim=1)
            passes += 1
            del logits
    return probs / passes


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


def labels_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=1)`` (the first maximum on ties), without the CPU's slow case.

    On the CPU, ``argmax`` over the class dimension of NCHW logits is a strided reduction, far
    slower than over channels-last logits. For NCHW logits the labels come from ``amax``, which
    is vectorised across the row, and one compare: the same labels (as uint8), at about the
    cost of the channels-last ``argmax`` (timings: ``benchmarks/RESULTS.md``).
    Channels-last logits, other devices and NaN logits (``amax`` would hide them) take
    ``argmax`` itself.
    """
    num_classes = logits.shape[1]
    if (
        logits.device.type != "cpu"
        or logits.ndim != 4
        or num_classes > 255
        or not logits.is_floating_point()
        or not logits.is_contiguous()
    ):
        return logits.argmax(dim=1)
    top = logits.amax(dim=1, keepdim=True)
    if bool(top.isnan().any()):
        return logits.argmax(dim=1)
    # Weight C for class 0 down to 1 for class C-1: the largest weighted hit is the first max.
    weights = torch.arange(num_classes, 0, -1, dtype=torch.uint8).view(1, -1, 1, 1)
    return num_classes - ((logits == top) * weights).amax(dim=1)


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
