"""Train and evaluation pipelines (torchvision ``transforms.v2``), following MMSeg's LoveDA configs.

MMSeg's LoveDA training pipeline (``configs/_base_/datasets/loveda.py``)::

    RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
    RandomCrop(crop_size=(512, 512), cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()
    # then the data preprocessor pads to the crop size with 0 (image) / 255 (mask)

and evaluation on the whole 1024x1024 tile. Here each step is a v2 transform that understands
``tv_tensors.Image`` and ``tv_tensors.Mask`` (geometric steps move both; photometric steps only the
image; masks always resample with nearest neighbour). :func:`train_transforms` composes them from
parameters: every step can be switched off (``False``) or replaced (pass a transform) without
touching the others.

Images stay ``uint8`` through the pipeline: models normalise on the device (see
:class:`loveda_utils.models.wrapper.SegmentationModel`), which moves 4x fewer bytes to the GPU. A
:func:`normalize` step is provided for pipelines that want float tensors on the CPU.

Samples are dicts ``{"image": uint8 [3, H, W], "mask": uint8 [H, W], ...}``; extra keys pass
through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import ConfigError
from .classes import IGNORE_INDEX

#: ImageNet statistics in the 0..1 range (torchvision's and timm's); the default normalisation.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: MMSeg's LoveDA training scale for crop 512: (long, short) = (4 * crop, crop).
MMSEG_SCALE_PER_CROP: tuple[int, int] = (4, 1)
MMSEG_RATIO_RANGE: tuple[float, float] = (0.5, 2.0)
MMSEG_CAT_MAX_RATIO: float = 0.75

Step = Callable[[Any], Any]


def _mask_of(flat_inputs: list[Any]) -> tv_tensors.Mask | None:
    return next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)


def _size_of(flat_inputs: list[Any]) -> tuple[int, int]:
    for x in flat_inputs:
        if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)):
            return tuple(x.shape[-2:])  # type: ignore[return-value]
    raise TypeError("the sample holds no tv_tensors.Image or tv_tensors.Mask; wrap it with ToTVTensors()")


class ToTVTensors(v2.Transform):
    """Wrap a sample dict's ``image`` / ``mask`` as ``tv_tensors`` so v2 steps know which is which."""

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        out = dict(sample)
        out["image"] = tv_tensors.Image(sample["image"])
        if "mask" in sample:
            out["mask"] = tv_tensors.Mask(sample["mask"])
        return out


class ToPlainTensors(v2.Transform):
    """Unwrap ``tv_tensors`` back to plain tensors (cheaper to collate and pickle across workers)."""

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        out = dict(sample)
        for key in ("image", "mask"):
            if key in out:
                out[key] = out[key].as_subclass(torch.Tensor)
        return out


class RandomRescale(v2.Transform):
    """MMSeg's ``RandomResize(scale, ratio_range, keep_ratio=True)``.

    A ratio ``r`` is drawn uniformly from ``ratio_range``; the tile is rescaled (aspect kept) to the
    largest size that fits inside ``(r * long, r * short)``. For a 1024 tile, ``scale=(2048, 512)``
    gives sides of 256..1024 px.
    """

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float]) -> None:
        super().__init__()
        if min(scale) <= 0 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ConfigError(f"RandomRescale: bad scale={scale} or ratio_range={ratio_range}")
        self.scale = (max(scale), min(scale))
        self.ratio_range = ratio_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _size_of(flat_inputs)
        lo, hi = self.ratio_range
        ratio = lo + float(torch.rand(())) * (hi - lo)
        long_target, short_target = self.scale[0] * ratio, self.scale[1] * ratio
        factor = min(long_target / max(h, w), short_target / min(h, w))
        return {"size": [max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # F.resize dispatches nearest-neighbour for Mask, bilinear (antialiased) for Image.
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)


class RandomCropCatMax(v2.Transform):
    """MMSeg's ``RandomCrop(crop_size, cat_max_ratio)``.

    Draws up to 10 crop windows and keeps the first in which no single class covers
    ``cat_max_ratio`` or more of the labelled pixels (and at least two classes occur), so that
    crops of pure agriculture or water do not dominate training. A tile smaller than the crop is
    cropped to its own size on that side (padding is a separate step, :class:`PadTo`).
    """

    def __init__(
        self, size: int, cat_max_ratio: float = 1.0, ignore_index: int = IGNORE_INDEX, tries: int = 10
    ) -> None:
        super().__init__()
        if size <= 0:
            raise ConfigError(f"crop_size must be a positive number of pixels, got {size}")
        self.size = int(size)
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index
        self.tries = tries

    def _random_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = min(self.size, h), min(self.size, w)
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return top, left, ch, cw

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _size_of(flat_inputs)
        mask = _mask_of(flat_inputs)
        box = self._random_box(h, w)
        if mask is not None and self.cat_max_ratio < 1.0:
            for _ in range(self.tries - 1):
                top, left, ch, cw = box
                window = mask[..., top : top + ch, left : left + cw].reshape(-1)
                counts = torch.bincount(window.long(), minlength=256)
                counts[self.ignore_index] = 0
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self._random_box(h, w)
        return {"box": box}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        top, left, ch, cw = params["box"]
        return self._call_kernel(F.crop, inpt, top=top, left=left, height=ch, width=cw)


class PadTo(v2.Transform):
    """Pad bottom/right up to ``size`` with 0 in the image and the ignore index in the mask."""

    def __init__(self, size: int, image_fill: int = 0, mask_fill: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size = int(size)
        self.fill = {tv_tensors.Image: image_fill, tv_tensors.Mask: mask_fill}

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _size_of(flat_inputs)
        return {"padding": [0, 0, max(0, self.size - w), max(0, self.size - h)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.fill.get(type(inpt), 0)
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=fill)


class PhotometricDistortion(v2.Transform):
    """MMSeg's ``PhotoMetricDistortion`` on the image only (masks pass through).

    Each with probability 0.5: additive brightness in ``[-32, 32]``, multiplicative contrast in
    ``[0.5, 1.5]`` (before or after the colour steps, at random), saturation in ``[0.5, 1.5]`` and
    hue shift of up to 18/180 of the hue circle (MMSeg's 18 OpenCV hue units). Runs in float and
    clips back to uint8, as MMSeg does.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    @staticmethod
    def _coin() -> bool:
        return bool(torch.rand(()) < 0.5)

    @staticmethod
    def _uniform(lo: float, hi: float) -> float:
        return lo + float(torch.rand(())) * (hi - lo)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        d = self.brightness_delta
        return {
            "brightness": self._uniform(-d, d) if self._coin() else None,
            "contrast_first": self._coin(),
            "contrast": self._uniform(*self.contrast_range) if self._coin() else None,
            "saturation": self._uniform(*self.saturation_range) if self._coin() else None,
            "hue": self._uniform(-self.hue_delta, self.hue_delta) / 180 if self._coin() else None,
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        dtype = inpt.dtype
        img = inpt.as_subclass(torch.Tensor).float()
        if params["brightness"] is not None:
            img = (img + params["brightness"]).clamp_(0, 255)
        if params["contrast"] is not None and params["contrast_first"]:
            img = (img * params["contrast"]).clamp_(0, 255)
        if params["saturation"] is not None:
            img = F.adjust_saturation(img / 255, params["saturation"]) * 255
        if params["hue"] is not None:
            img = F.adjust_hue((img / 255).clamp_(0, 1), params["hue"]) * 255
        if params["contrast"] is not None and not params["contrast_first"]:
            img = (img * params["contrast"]).clamp_(0, 255)
        if dtype == torch.uint8:
            img = img.round_().clamp_(0, 255).to(torch.uint8)
        return tv_tensors.wrap(img, like=inpt)


def normalize(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """uint8 image -> float in 0..1 -> ``(x - mean) / std``; masks untouched."""
    return v2.Compose([v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                       v2.Normalize(mean=list(mean), std=list(std))])


def _pick(option: bool | Step | None, default: Callable[[], Step]) -> Step | None:
    """A step argument: True -> the default implementation, False/None -> skipped, else as given."""
    if option is True:
        return default()
    if option is False or option is None:
        return None
    if not callable(option):
        raise ConfigError(f"a pipeline step must be True, False or a transform, got {option!r}")
    return option


def train_transforms(
    crop_size: int = 512,
    *,
    scale: tuple[int, int] | None = None,
    ratio_range: tuple[float, float] = MMSEG_RATIO_RANGE,
    cat_max_ratio: float = MMSEG_CAT_MAX_RATIO,
    resize: bool | Step = True,
    crop: bool | Step = True,
    flip: bool | Step = True,
    photometric: bool | Step = True,
    pad: bool | Step = True,
    normalization: bool | Step = False,
) -> v2.Compose:
    """MMSeg's LoveDA training pipeline, one switchable step per argument.

    Args:
        crop_size: side of the square training crop (MMSeg: 512).
        scale: ``(long, short)`` of the random rescale; default ``(4 * crop, crop)``, which is
            MMSeg's ``(2048, 512)`` at crop 512 and keeps the same proportions for other crops.
        ratio_range: range of the random scale ratio.
        cat_max_ratio: the random crop avoids windows dominated by one class above this share.
        resize, crop, flip, photometric, pad, normalization: ``True`` for the default step,
            ``False`` to skip it, or a transform to use instead.
    """
    if scale is None:
        scale = (MMSEG_SCALE_PER_CROP[0] * crop_size, MMSEG_SCALE_PER_CROP[1] * crop_size)
    steps = [
        ToTVTensors(),
        _pick(resize, lambda: RandomRescale(scale, ratio_range)),
        _pick(crop, lambda: RandomCropCatMax(crop_size, cat_max_ratio)),
        _pick(flip, lambda: v2.RandomHorizontalFlip(p=0.5)),
        _pick(photometric, PhotometricDistortion),
        _pick(pad, lambda: PadTo(crop_size)),
        _pick(normalization, normalize),
        ToPlainTensors(),
    ]
    return v2.Compose([s for s in steps if s is not None])


def eval_transforms(*, normalization: bool | Step = False) -> v2.Compose:
    """MMSeg's evaluation pipeline: the whole tile, unchanged (optionally normalised)."""
    steps = [ToTVTensors(), _pick(normalization, normalize), ToPlainTensors()]
    return v2.Compose([s for s in steps if s is not None])


def default_crop_size(tile_side: int) -> int:
    """MMSeg trains 512 px crops on 1024 px tiles: half the tile, at most 512."""
    return max(16, min(512, tile_side // 2))


def crop_fits(crop_size: int, tile_size: tuple[int, int]) -> None:
    """Refuse a training crop larger than the tiles (``ConfigError`` naming both)."""
    h, w = tile_size
    if crop_size > min(h, w):
        raise ConfigError(
            f"crop_size={crop_size} is larger than the tiles ({h}x{w} px); "
            f"choose crop_size <= {min(h, w)}"
        )


def describe(pipeline: v2.Compose) -> list[str]:
    """One line per step, for notebooks and logs."""
    return [repr(t).replace("\n", " ") for t in pipeline.transforms]

