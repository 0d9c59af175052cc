"""Train and evaluation pipelines (torchvision ``transforms.v2``), replicating MMSegmentation's.

MMSeg 1.2.2's LoveDA training pipeline (``configs/_base_/datasets/loveda.py``)::

    RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
    RandomCrop(crop_size=(512, 512), cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()
    # then SegDataPreProcessor: BGR -> RGB, (x - mean) / std, pad to the crop with 0 / 255

and evaluation on the whole 1024x1024 tile. Here each step is a v2 transform that understands
``tv_tensors.Image`` and ``tv_tensors.Mask`` (geometric steps move both; photometric steps only the
image; masks always resample with nearest neighbour). :func:`train_transforms` composes them from
parameters: every step can be switched off (``False``) or replaced (pass a transform) without
touching the others.

``fidelity="mmseg"`` (the default) reproduces mmcv/MMSeg's arithmetic; ``tests/parity`` runs
MMSeg's own code on the same tiles with the same draws and checks each step:

- Rescale: the target scale is floored (``int(512 * ratio)``), the size then rounded, as mmcv's
  ``RandomResize`` + ``imrescale``; bilinear without antialiasing in OpenCV's ``INTER_LINEAR``
  fixed-point arithmetic (:mod:`loveda_utils.data.opencv_ops`).
- Crop: 10 windows are checked against ``cat_max_ratio``; the 11th is kept unchecked.
- Photometric: every step truncates to uint8 as MMSeg's ``convert`` does; saturation and hue work
  in OpenCV's uint8 HSV (``H`` in 0..179, integer hue shifts in ``-18..17``), computed with
  OpenCV's integer RGB -> HSV and its vectorised float HSV -> RGB.
- Padding: MMSeg pads after normalisation with 0, i.e. with the mean colour. Images here stay
  ``uint8`` until the model normalises on the device, so they are padded with the normalisation
  mean in 0..255 rounded to integers (:func:`pad_fill_for`), which reaches the network within
  ``0.5 / std`` (under 0.01 for ImageNet statistics) of MMSeg's 0. The mean depends on the
  model's weights: pass ``pad_fill=pad_fill_for(model.mean)``; the default is ImageNet's.

``fidelity="fast"`` keeps the same draws and geometry but uses torchvision's antialiased resize and
float colour operations (``adjust_saturation`` blends with luma grey, ``adjust_hue`` in float),
rounded once at the end. The choice shows in each step's ``repr`` and so in :func:`describe`.

Images stay ``uint8`` through the pipeline: models normalise on the device (see
:class:`loveda_utils.models.wrapper.SegmentationModel`), which moves 4x fewer bytes to the GPU. A
:func:`normalize` step is provided for pipelines that want float tensors on the CPU.

Samples are dicts ``{"image": uint8 [3, H, W], "mask": uint8 [H, W], ...}``; extra keys pass
through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import ConfigError
from .classes import IGNORE_INDEX
from .opencv_ops import hsv_to_rgb_cv2, resize_linear_cv2, resize_nearest_cv2, rgb_to_hsv_cv2

#: ImageNet statistics in the 0..1 range (torchvision's and timm's); the default normalisation.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: MMSeg's LoveDA training scale for crop 512: (long, short) = (4 * crop, crop).
MMSEG_SCALE_PER_CROP: tuple[int, int] = (4, 1)
MMSEG_RATIO_RANGE: tuple[float, float] = (0.5, 2.0)
MMSEG_CAT_MAX_RATIO: float = 0.75
#: MMSeg's ``RandomCrop`` checks this many windows against ``cat_max_ratio``.
MMSEG_CAT_MAX_CHECKS: int = 10

Fidelity = Literal["mmseg", "fast"]
FIDELITIES: tuple[str, ...] = ("mmseg", "fast")

Step = Callable[[Any], Any]


def _check_fidelity(fidelity: str) -> str:
    if fidelity not in FIDELITIES:
        raise ConfigError(f"fidelity={fidelity!r} is not one of {', '.join(FIDELITIES)}")
    return fidelity


def pad_fill_for(mean: Sequence[float] | torch.Tensor) -> tuple[int, ...]:
    """The uint8 pad colour that a model normalising with ``mean`` (0..255 units) sees as ~0.

    ``mean`` is what :class:`~loveda_utils.models.registry.SegmentationModel` holds in its
    ``mean`` buffer (any shape with 3 values); the result is rounded to the nearest integer.
    """
    values = torch.as_tensor(mean, dtype=torch.float64).flatten().tolist()
    if not all(0.0 <= v <= 255.0 for v in values):
        raise ConfigError(f"pad_fill_for: mean={values} is not in 0..255 units")
    return tuple(int(v + 0.5) for v in values)


#: The pad colour for ImageNet-normalised models: (124, 116, 104).
IMAGENET_PAD_FILL: tuple[int, ...] = pad_fill_for([255 * m for m in IMAGENET_MEAN])


def _mask_of(flat_inputs: list[Any]) -> tv_tensors.Mask | None:
    return next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)


def _size_of(flat_inputs: list[Any]) -> tuple[int, int]:
    for x in flat_inputs:
        if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)):
            return tuple(x.shape[-2:])
    raise TypeError("the sample holds no tv_tensors.Image or tv_tensors.Mask; wrap it with ToTVTensors()")


def _uniform(lo: float, hi: float) -> float:
    """A float64 draw in ``[lo, hi)`` from torch's generator (numpy's ``uniform`` is float64)."""
    return lo + float(torch.rand((), dtype=torch.float64)) * (hi - lo)


def _coin() -> bool:
    return bool(torch.rand(()) < 0.5)


class ToTVTensors(v2.Transform):
    """Wrap a sample dict's ``image`` / ``mask`` as ``tv_tensors`` so v2 steps know which is which."""

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        out["image"] = tv_tensors.Image(sample["image"])
        if "mask" in sample:
            out["mask"] = tv_tensors.Mask(sample["mask"])
        return out


class ToPlainTensors(v2.Transform):
    """Unwrap ``tv_tensors`` back to plain tensors (cheaper to collate and pickle across workers)."""

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        for key in ("image", "mask"):
            if key in out:
                out[key] = out[key].as_subclass(torch.Tensor)
        return out


class RandomRescale(v2.Transform):
    """mmcv's ``RandomResize(scale, ratio_range, keep_ratio=True)``.

    A ratio ``r`` is drawn uniformly from ``ratio_range``; the target scale is
    ``(int(long * r), int(short * r))`` (floored, as mmcv) and the tile is rescaled, aspect kept, to
    the largest size inside it, each side rounded (mmcv's ``rescale_size``). For a 1024 tile,
    ``scale=(2048, 512)`` gives sides of 256..1024 px. ``fidelity="mmseg"`` resamples the image
    as OpenCV's ``INTER_LINEAR`` (:func:`~loveda_utils.data.opencv_ops.resize_linear_cv2`);
    ``"fast"`` with torchvision's antialiased bilinear kernel. Masks take the nearest neighbour
    (with OpenCV's indices under ``"mmseg"``).
    """

    def __init__(
        self, scale: tuple[int, int], ratio_range: tuple[float, float], fidelity: Fidelity = "mmseg"
    ) -> None:
        super().__init__()
        if min(scale) <= 0 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ConfigError(f"RandomRescale: bad scale={scale} or ratio_range={ratio_range}")
        self.scale = (max(scale), min(scale))
        self.ratio_range = ratio_range
        self.fidelity = _check_fidelity(fidelity)

    def sample_ratio(self) -> float:
        return _uniform(*self.ratio_range)

    def output_size(self, ratio: float, size: tuple[int, int]) -> list[int]:
        """``[h, w]`` after rescaling a ``size = (h, w)`` tile at ``ratio`` (mmcv's arithmetic)."""
        h, w = size
        long_edge, short_edge = int(self.scale[0] * ratio), int(self.scale[1] * ratio)
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
        return [max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        ratio = self.sample_ratio()
        return {"ratio": ratio, "size": self.output_size(ratio, _size_of(flat_inputs))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        size = params["size"]
        if self.fidelity == "mmseg" and isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            plain = inpt.as_subclass(torch.Tensor)
            if isinstance(inpt, tv_tensors.Mask):
                return tv_tensors.wrap(resize_nearest_cv2(plain, size), like=inpt)
            if plain.dtype == torch.uint8:
                return tv_tensors.wrap(resize_linear_cv2(plain, size), like=inpt)
        # torchvision: bilinear for images (antialiased when "fast"), nearest for masks.
        return self._call_kernel(F.resize, inpt, size=size, antialias=self.fidelity == "fast")


class RandomCropCatMax(v2.Transform):
    """MMSeg's ``RandomCrop(crop_size, cat_max_ratio)``.

    Draws a window; while it fails the check (one class covers ``cat_max_ratio`` or more of the
    labelled pixels, or fewer than two classes occur) draws another, checking ``checks`` windows
    in all and keeping the one drawn after the last check unchecked, as MMSeg does. This keeps
    crops of pure agriculture or water from dominating training. A tile smaller than the crop is
    cropped to its own size on that side (padding is a separate step, :class:`PadTo`).
    """

    def __init__(
        self,
        size: int,
        cat_max_ratio: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        checks: int = MMSEG_CAT_MAX_CHECKS,
    ) -> None:
        super().__init__()
        if size <= 0:
            raise ConfigError(f"crop_size must be a positive number of pixels, got {size}")
        self.size = int(size)
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index
        self.checks = checks

    def sample_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """One random window ``(top, left, height, width)``; top drawn first, as MMSeg."""
        ch, cw = min(self.size, h), min(self.size, w)
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return top, left, ch, cw

    def accepts(self, window: torch.Tensor) -> bool:
        """Whether a mask window passes MMSeg's ``cat_max_ratio`` check."""
        counts = torch.bincount(window.reshape(-1).long(), minlength=256)
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and bool(counts.max() / counts.sum() < self.cat_max_ratio)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _size_of(flat_inputs)
        mask = _mask_of(flat_inputs)
        box = self.sample_box(h, w)
        if mask is not None and self.cat_max_ratio < 1.0:
            for _ in range(self.checks):
                top, left, ch, cw = box
                if self.accepts(mask[..., top : top + ch, left : left + cw]):
                    break
                box = self.sample_box(h, w)
        return {"box": box}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        top, left, ch, cw = params["box"]
        return self._call_kernel(F.crop, inpt, top=top, left=left, height=ch, width=cw)


class PadTo(v2.Transform):
    """Pad bottom/right up to ``size``: the image with ``image_fill``, the mask with ``mask_fill``.

    ``image_fill`` is one value or one per channel; the default is the ImageNet mean colour
    (:data:`IMAGENET_PAD_FILL`), which normalises to ~0 as MMSeg's padding after normalisation.
    """

    def __init__(
        self,
        size: int,
        image_fill: int | Sequence[int] = IMAGENET_PAD_FILL,
        mask_fill: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.size = int(size)
        self.image_fill = image_fill if isinstance(image_fill, int) else tuple(image_fill)
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _size_of(flat_inputs)
        return {"padding": [0, 0, max(0, self.size - w), max(0, self.size - h)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        if isinstance(inpt, tv_tensors.Image):
            fill = self.image_fill if isinstance(self.image_fill, int) else list(self.image_fill)
        else:
            fill = self.mask_fill
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=fill)


def _affine_u8(x: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """MMSeg's ``convert``: ``x * alpha + beta`` in float32, clipped to 0..255, truncated."""
    return (x.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)


class PhotometricDistortion(v2.Transform):
    """MMSeg's ``PhotoMetricDistortion`` on the image only (masks pass through).

    Each with probability 0.5: additive brightness in ``[-32, 32)``, multiplicative contrast in
    ``[0.5, 1.5)`` (before or after the colour steps, at random), saturation scaled by a factor in
    ``[0.5, 1.5)`` and an integer hue shift in ``-18..17`` OpenCV hue units (of 180). With
    ``fidelity="mmseg"`` each step truncates to uint8 and the colour steps work in OpenCV's uint8
    HSV, as MMSeg; ``"fast"`` runs in float with torchvision's ``adjust_saturation`` (a blend
    with luma grey) and ``adjust_hue``, rounding once.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        fidelity: Fidelity = "mmseg",
    ) -> None:
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta
        self.fidelity = _check_fidelity(fidelity)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        d = self.brightness_delta
        return {
            "brightness": _uniform(-d, d) if _coin() else None,
            "contrast_first": _coin(),
            "contrast": _uniform(*self.contrast_range) if _coin() else None,
            "saturation": _uniform(*self.saturation_range) if _coin() else None,
            "hue": int(torch.randint(-self.hue_delta, self.hue_delta, ())) if _coin() else None,
        }

    @staticmethod
    def apply_mmseg(img: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """MMSeg's order and arithmetic on a uint8 RGB ``[3, H, W]`` image."""
        if params["brightness"] is not None:
            img = _affine_u8(img, beta=params["brightness"])
        if params["contrast"] is not None and params["contrast_first"]:
            img = _affine_u8(img, alpha=params["contrast"])
        if params["saturation"] is not None:
            hsv = rgb_to_hsv_cv2(img)
            sat = _affine_u8(hsv[1], alpha=params["saturation"])
            img = hsv_to_rgb_cv2(torch.stack([hsv[0], sat, hsv[2]]))
        if params["hue"] is not None:
            hsv = rgb_to_hsv_cv2(img)
            hue = ((hsv[0].to(torch.int32) + params["hue"]) % 180).to(torch.uint8)
            img = hsv_to_rgb_cv2(torch.stack([hue, hsv[1], hsv[2]]))
        if params["contrast"] is not None and not params["contrast_first"]:
            img = _affine_u8(img, alpha=params["contrast"])
        return img

    @staticmethod
    def apply_fast(img: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """The same draws in float with torchvision's colour operations, rounded once."""
        dtype = img.dtype
        x = img.float()
        if params["brightness"] is not None:
            x = (x + params["brightness"]).clamp_(0, 255)
        if params["contrast"] is not None and params["contrast_first"]:
            x = (x * params["contrast"]).clamp_(0, 255)
        if params["saturation"] is not None:
            x = F.adjust_saturation(x / 255, params["saturation"]) * 255
        if params["hue"] is not None:
            x = F.adjust_hue((x / 255).clamp_(0, 1), params["hue"] / 180) * 255
        if params["contrast"] is not None and not params["contrast_first"]:
            x = (x * params["contrast"]).clamp_(0, 255)
        return x.round_().clamp_(0, 255).to(dtype) if dtype == torch.uint8 else x

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        img = inpt.as_subclass(torch.Tensor)
        if self.fidelity == "mmseg" and img.dtype == torch.uint8:
            out = self.apply_mmseg(img, params)
        else:
            out = self.apply_fast(img, params)
        return tv_tensors.wrap(out, like=inpt)


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
    crop_size: int,
    *,
    fidelity: Fidelity = "mmseg",
    scale: tuple[int, int] | None = None,
    ratio_range: tuple[float, float] = MMSEG_RATIO_RANGE,
    cat_max_ratio: float = MMSEG_CAT_MAX_RATIO,
    pad_fill: int | Sequence[int] = IMAGENET_PAD_FILL,
    resize: bool | Step = True,
    crop: bool | Step = True,
    flip: bool | Step = True,
    photometric: bool | Step = True,
    pad: bool | Step = True,
    normalization: bool | Step = False,
) -> v2.Compose:
    """MMSeg's LoveDA training pipeline, one switchable step per argument.

    Args:
        crop_size: side of the square training crop (the recipe's, ``training/recipe.py``).
        fidelity: ``"mmseg"`` reproduces mmcv's resize and MMSeg's uint8 photometric arithmetic;
            ``"fast"`` uses torchvision's antialiased resize and float colour operations (module
            docstring).
        scale: ``(long, short)`` of the random rescale; default ``(4 * crop, crop)``, which is
            MMSeg's ``(2048, 512)`` at crop 512 and keeps the same proportions for other crops.
        ratio_range: range of the random scale ratio.
        cat_max_ratio: the random crop avoids windows dominated by one class above this share.
        pad_fill: uint8 colour of the padding, ``pad_fill_for(model.mean)`` for the model trained
            (default: the ImageNet mean).
        resize, crop, flip, photometric, pad, normalization: ``True`` for the default step,
            ``False`` to skip it, or a transform to use instead.
    """
    _check_fidelity(fidelity)
    if scale is None:
        scale = (MMSEG_SCALE_PER_CROP[0] * crop_size, MMSEG_SCALE_PER_CROP[1] * crop_size)
    steps = [
        ToTVTensors(),
        _pick(resize, lambda: RandomRescale(scale, ratio_range, fidelity)),
        _pick(crop, lambda: RandomCropCatMax(crop_size, cat_max_ratio)),
        _pick(flip, lambda: v2.RandomHorizontalFlip(p=0.5)),
        _pick(photometric, lambda: PhotometricDistortion(fidelity=fidelity)),
        _pick(pad, lambda: PadTo(crop_size, image_fill=pad_fill)),
        _pick(normalization, normalize),
        ToPlainTensors(),
    ]
    return v2.Compose([s for s in steps if s is not None])


def eval_transforms(*, normalization: bool | Step = False) -> v2.Compose:
    """MMSeg's evaluation pipeline: the whole tile, unchanged (optionally normalised).

    MMSeg's LoveDA test pipeline rescales to fit 1024x1024, which leaves LoveDA's tiles as they are.
    """
    steps = [ToTVTensors(), _pick(normalization, normalize), ToPlainTensors()]
    return v2.Compose([s for s in steps if s is not None])


def crop_fits(crop_size: int, tile_size: tuple[int, int]) -> None:
    """Refuse a training crop larger than the tiles (``ConfigError`` naming both)."""
    h, w = tile_size
    if crop_size > min(h, w):
        raise ConfigError(
            f"crop_size={crop_size} is larger than the tiles ({h}x{w} px); "
            f"choose crop_size <= {min(h, w)}"
        )


def describe(pipeline: v2.Compose) -> list[str]:
    """One line per step (with each step's ``fidelity``), for notebooks, logs and records."""
    return [repr(t).replace("\n", " ") for t in pipeline.transforms]
