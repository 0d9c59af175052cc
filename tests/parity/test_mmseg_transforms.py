"""Each training step, and the whole training and test pipelines, against MMSeg 1.2.2's own.

Both sides get the same tile and the same random draws (MMSeg's recorded and replayed through
ours, or scripted from ours); images agree within one grey level, masks exactly. MMSeg's
transforms come from the LoveDA config it ships (``configs/_base_/datasets/loveda.py``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tree
from parity.mmseg_draws import photometric_script, replay
from torchvision import tv_tensors
from torchvision.transforms import v2

from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.data.opencv_ops import hsv_to_rgb_cv2, rgb_to_hsv_cv2
from loveda_utils.data.transforms import (
    PadTo,
    PhotometricDistortion,
    RandomCropCatMax,
    RandomRescale,
    ToPlainTensors,
    ToTVTensors,
    describe,
    eval_transforms,
    pad_fill_for,
    train_transforms,
)

DEEPLAB = "deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_loveda-512x512.py"
#: MMSeg's OpenCV arithmetic is replicated bit for bit where the CPU vectorises it; elsewhere
#: (see hsv_to_rgb_cv2) at most a grey level apart, on a small share of the pixels.
MAX_MISMATCH_SHARE = 1e-3


# --------------------------------------------------------------------------- helpers


def bgr(image: torch.Tensor) -> np.ndarray:
    """Our uint8 RGB ``[3, H, W]`` as MMSeg holds images: BGR ``[H, W, 3]``."""
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy()[..., ::-1])


def rgb(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array[..., ::-1])).permute(2, 0, 1)


def ours(step, image: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    sample = {"image": image} if mask is None else {"image": image, "mask": mask}
    return ToPlainTensors()(step(ToTVTensors()(sample)))


def theirs(transform, image: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    results = {"img": bgr(image), "img_shape": tuple(image.shape[-2:]), "seg_fields": []}
    if mask is not None:
        results["gt_seg_map"] = mask.numpy().copy()
        results["seg_fields"].append("gt_seg_map")
    out = transform(results)
    return {"image": rgb(out["img"]), "mask": None if mask is None else torch.from_numpy(out["gt_seg_map"])}


def assert_within_one_grey_level(a: torch.Tensor, b: torch.Tensor, exact_share: float | None = None) -> None:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs MMSeg {tuple(b.shape)}"
    diff = (a.int() - b.int()).abs()
    assert int(diff.max()) <= 1, f"{int(diff.max())} grey levels apart from MMSeg"
    if exact_share is not None:
        share = float((diff > 0).float().mean())
        assert share <= exact_share, f"{share:.2%} of the values differ from MMSeg's"


def train_step(ref, index: int, **changes):
    cfg = copy.deepcopy(ref.loveda().train_pipeline[index])
    cfg.update(changes)
    return ref.build(cfg)


@pytest.fixture(scope="module")
def real_tiles(loveda_tiles: Path) -> LoveDASegmentation:
    return LoveDASegmentation(loveda_tiles, "train", "rural")


@pytest.fixture(scope="module")
def generated_tiles(tmp_path_factory: pytest.TempPathFactory) -> LoveDASegmentation:
    root = write_tree(tmp_path_factory.mktemp("gen") / "loveda", splits=("Train",), scenes=("Rural",),
                      n=3, size=160, seed=3)
    return LoveDASegmentation(root, "train", "rural")


def tiles(real_tiles, generated_tiles, n_real: int = 2) -> list[dict]:
    return [real_tiles[i] for i in range(n_real)] + [generated_tiles[i] for i in range(len(generated_tiles))]


# --------------------------------------------------------------------------- rescale


def test_mmseg_rescale_size_follows_mmcv(mmseg_ref, numpy_draws) -> None:
    """The drawn ratio -> output size (floored scale, rounded size) as mmcv's RandomResize."""
    floored_differs = False
    for scale, shape in (((2048, 512), (1024, 1024)), ((256, 64), (128, 128)), ((2048, 512), (1024, 700))):
        mm = train_step(mmseg_ref, 2, scale=scale)
        step = RandomRescale(scale, (0.5, 2.0))
        image = torch.zeros(3, *shape, dtype=torch.uint8)
        for u in np.linspace(0, 1, 97, endpoint=False).tolist() + [0.1337, 0.4669, 0.99999]:
            numpy_draws([u])
            got = theirs(mm, image)["image"].shape[-2:]
            ratio = u * 1.5 + 0.5
            assert step.output_size(ratio, shape) == list(got), (scale, shape, u)
            # Rounding the unfloored target (this step's former arithmetic) gives another size:
            old = min(scale[0] * ratio / max(shape), scale[1] * ratio / min(shape))
            floored_differs |= [int(s * old + 0.5) for s in shape] != list(got)
    assert floored_differs


@pytest.mark.parametrize("u", [0.0, 0.0669, 0.1337, 0.3333, 0.5, 0.8123])
def test_mmseg_rescale_pixels(mmseg_ref, numpy_draws, real_tiles, generated_tiles, u: float) -> None:
    for sample in tiles(real_tiles, generated_tiles, n_real=1):
        side = sample["image"].shape[-1]
        scale = (2048, 512) if side == 1024 else (4 * side // 2, side // 2)
        step = RandomRescale(scale, (0.5, 2.0))
        step.sample_ratio = lambda: u * 1.5 + 0.5
        numpy_draws([u])
        mm = theirs(train_step(mmseg_ref, 2, scale=scale), sample["image"], sample["mask"])
        got = ours(step, sample["image"], sample["mask"])
        # Downscaling (all a tile gets here) is OpenCV's fixed-point arithmetic exactly.
        assert torch.equal(got["image"], mm["image"]), "bilinear resize differs from OpenCV's"
        assert torch.equal(got["mask"], mm["mask"]), "nearest-neighbour masks differ from mmcv's"


def test_mmseg_rescale_mask_indices_at_every_size(mmseg_ref, real_tiles) -> None:
    """OpenCV's nearest-neighbour indices (double scale) at every side a 1024 tile can get."""
    cv2 = mmseg_ref.cv2
    mask = real_tiles[4]["mask"]
    step = RandomRescale((2048, 512), (0.5, 2.0))
    torch_differs = False
    for side in range(257, 1025, 5):
        got = step.transform(tv_tensors.Mask(mask), {"size": [side, side]})
        expected = torch.from_numpy(cv2.resize(mask.numpy(), (side, side), interpolation=cv2.INTER_NEAREST))
        assert torch.equal(got.as_subclass(torch.Tensor), expected), side
        torch_nearest = v2.functional.resize(mask[None], [side, side], v2.InterpolationMode.NEAREST)[0]
        torch_differs |= not torch.equal(torch_nearest, expected)
    assert torch_differs, "torch's own nearest mode should differ somewhere (else this test is moot)"


# --------------------------------------------------------------------------- crop and flip


def test_mmseg_crop_checks_ten_windows_then_keeps_the_eleventh(mmseg_ref, numpy_draws) -> None:
    image = torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = torch.full((96, 96), 2, dtype=torch.uint8)  # one class: every window fails the check
    offsets = [(i, 2 * i) for i in range(11)] + [(30, 30)]
    draws = numpy_draws([v for pair in offsets for v in pair])
    mm = theirs(train_step(mmseg_ref, 3, crop_size=(32, 32)), image, mask)
    assert len(draws.script) == 2, "MMSeg's RandomCrop should have drawn 11 windows"
    step = RandomCropCatMax(32, 0.75)
    drawn = iter(offsets)
    step.sample_box = lambda h, w: (*next(drawn), 32, 32)
    got = ours(step, image, mask)
    assert torch.equal(got["image"], mm["image"]) and torch.equal(got["mask"], mm["mask"])
    assert torch.equal(got["image"], image[:, 10:42, 20:52])
    assert next(drawn) == (30, 30), "our crop drew a different number of windows"


@pytest.mark.parametrize("seed", range(4))
def test_mmseg_crop_on_real_tiles(mmseg_ref, numpy_draws, real_tiles, seed: int) -> None:
    sample = real_tiles[seed]
    np.random.seed(seed)
    draws = numpy_draws()
    mm = theirs(train_step(mmseg_ref, 3), sample["image"], sample["mask"])
    pipeline = replay(v2.Compose([RandomCropCatMax(512, 0.75)]), draws)
    got = ours(pipeline, sample["image"], sample["mask"])
    assert not pipeline.transforms[0].unused_offsets
    assert torch.equal(got["image"], mm["image"]) and torch.equal(got["mask"], mm["mask"])


def test_mmseg_flip(mmseg_ref, real_tiles) -> None:
    sample = real_tiles[0]
    mm = theirs(train_step(mmseg_ref, 4, prob=1.0), sample["image"], sample["mask"])
    got = ours(v2.RandomHorizontalFlip(p=1.0), sample["image"], sample["mask"])
    assert torch.equal(got["image"], mm["image"]) and torch.equal(got["mask"], mm["mask"])


# --------------------------------------------------------------------------- photometric

PHOTOMETRIC = [
    {"brightness": 17.3, "contrast_first": True, "contrast": None, "saturation": None, "hue": None},
    {"brightness": -31.9, "contrast_first": False, "contrast": None, "saturation": None, "hue": None},
    {"brightness": None, "contrast_first": True, "contrast": 0.57, "saturation": None, "hue": None},
    {"brightness": None, "contrast_first": False, "contrast": 1.43, "saturation": None, "hue": None},
    {"brightness": None, "contrast_first": False, "contrast": None, "saturation": 0.5, "hue": None},
    {"brightness": None, "contrast_first": True, "contrast": None, "saturation": 1.49, "hue": None},
    {"brightness": None, "contrast_first": True, "contrast": None, "saturation": None, "hue": -18},
    {"brightness": None, "contrast_first": True, "contrast": None, "saturation": None, "hue": 17},
    {"brightness": 12.5, "contrast_first": True, "contrast": 1.3, "saturation": 0.7, "hue": -7},
    {"brightness": -5.25, "contrast_first": False, "contrast": 0.8, "saturation": 1.2, "hue": 4},
]


def all_colours(width: int = 512) -> torch.Tensor:
    """Every RGB colour with channels in steps of 5, as a ``[3, N / width, width]`` image."""
    levels = torch.arange(0, 256, 5, dtype=torch.uint8)
    r, g, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    flat = torch.stack([r, g, b]).reshape(3, -1)
    flat = flat[:, : flat.shape[1] // width * width]
    return flat.reshape(3, -1, width).contiguous()


@pytest.mark.parametrize("params", PHOTOMETRIC, ids=lambda p: "+".join(k for k, v in p.items() if v not in (None, False, True)))
def test_mmseg_photometric(mmseg_ref, numpy_draws, real_tiles, params: dict) -> None:
    images = [real_tiles[0]["image"][:, :512, :512], real_tiles[1]["image"][:, 256:768, 256:768], all_colours()]
    step = PhotometricDistortion()
    for image in images:
        numpy_draws(photometric_script(params))
        mm = theirs(train_step(mmseg_ref, 5), image)
        got = step.transform(v2.functional.to_image(image), params)
        assert_within_one_grey_level(got, mm["image"], exact_share=MAX_MISMATCH_SHARE)


def test_mmseg_photometric_fast_is_the_approximation(mmseg_ref, numpy_draws, real_tiles) -> None:
    """``fidelity="fast"`` is measurably not MMSeg's arithmetic (so the default must be "mmseg")."""
    params = PHOTOMETRIC[-2]
    image = real_tiles[0]["image"][:, :512, :512]
    numpy_draws(photometric_script(params))
    mm = theirs(train_step(mmseg_ref, 5), image)["image"]
    fast = PhotometricDistortion(fidelity="fast").transform(v2.functional.to_image(image), params)
    assert int((fast.int() - mm.int()).abs().max()) > 1
    assert "fidelity=mmseg" in describe(train_transforms(512))[4]


def test_mmseg_hsv_conversions_on_every_colour(mmseg_ref) -> None:
    """OpenCV's uint8 RGB -> HSV on all 2^24 colours, HSV -> RGB on all 180 x 256 x 256 triples."""
    cv2 = mmseg_ref.cv2
    codes = torch.arange(1 << 24, dtype=torch.int32)
    image = torch.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255]).to(torch.uint8)
    image = image.reshape(3, 4096, 4096)
    expected = torch.from_numpy(cv2.cvtColor(image.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2HSV))
    assert torch.equal(rgb_to_hsv_cv2(image), expected.permute(2, 0, 1))

    h, s, v = torch.meshgrid(torch.arange(180), torch.arange(256), torch.arange(256), indexing="ij")
    hsv = torch.stack([h, s, v]).to(torch.uint8).reshape(3, 180 * 256, 256)
    expected = torch.from_numpy(cv2.cvtColor(hsv.permute(1, 2, 0).numpy(), cv2.COLOR_HSV2RGB))
    assert_within_one_grey_level(hsv_to_rgb_cv2(hsv), expected.permute(2, 0, 1), exact_share=MAX_MISMATCH_SHARE)


# --------------------------------------------------------------------------- padding


def test_mmseg_pad_reaches_the_network_as_mmseg_padding(mmseg_ref, real_tiles) -> None:
    """MMSeg pads after normalisation with 0 / 255; our uint8 mean colour normalises to ~0."""
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    cfg = mmseg_ref.config(DEEPLAB).model.data_preprocessor
    preprocessor = MODELS.build(cfg)
    sample = real_tiles[2]
    image, mask = sample["image"][:, :300, :260], sample["mask"][:300, :260]
    data_sample = SegDataSample(gt_sem_seg=PixelData(data=mask[None].long()))
    mm = preprocessor({"inputs": [torch.from_numpy(bgr(image)).permute(2, 0, 1)],
                       "data_samples": [data_sample]}, training=True)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    got = ours(PadTo(512, image_fill=pad_fill_for(cfg.mean)), image, mask)
    normalised = (got["image"].float() - mean) / std
    expected = mm["inputs"][0]
    assert normalised.shape == expected.shape == (3, 512, 512)
    torch.testing.assert_close(normalised[:, :300, :260], expected[:, :300, :260])
    padded = torch.ones(512, 512, dtype=torch.bool)
    padded[:300, :260] = False
    assert float((normalised - expected)[:, padded].abs().max()) <= float((0.5 / std).max())
    assert torch.equal(got["mask"].long(), mm["data_samples"][0].gt_sem_seg.data[0])


# --------------------------------------------------------------------------- whole pipelines


def mmseg_train(ref, image_path: Path, crop: int) -> dict:
    """MMSeg's LoveDA training pipeline and data preprocessor on one tile, from its configs."""
    from mmcv.transforms import Compose
    from mmseg.registry import MODELS

    pipeline_cfg = copy.deepcopy(ref.loveda().train_pipeline)
    pipeline_cfg[2]["scale"] = (4 * crop, crop)
    pipeline_cfg[3]["crop_size"] = (crop, crop)
    pipeline = Compose([ref.build(c) for c in pipeline_cfg])
    preprocessor_cfg = ref.config(DEEPLAB).model.data_preprocessor
    preprocessor_cfg["size"] = (crop, crop)
    packed = pipeline({"img_path": str(image_path),
                       "seg_map_path": str(image_path).replace("images_png", "masks_png"),
                       "reduce_zero_label": True, "seg_fields": []})
    data = MODELS.build(preprocessor_cfg)({"inputs": [packed["inputs"]],
                                           "data_samples": [packed["data_samples"]]}, training=True)
    return {"inputs": data["inputs"][0], "mask": data["data_samples"][0].gt_sem_seg.data[0],
            "mean": torch.tensor(preprocessor_cfg.mean).view(3, 1, 1),
            "std": torch.tensor(preprocessor_cfg.std).view(3, 1, 1)}


def check_train_pipeline(ref, numpy_draws, dataset: LoveDASegmentation, index: int, crop: int, seed: int) -> None:
    np.random.seed(seed)
    draws = numpy_draws()
    mm = mmseg_train(ref, Path(dataset.files[index]["image"]), crop)
    pipeline = replay(train_transforms(crop, pad_fill=pad_fill_for(mm["mean"])), draws)
    got = pipeline(dataset[index])
    crop_step = next(t for t in pipeline.transforms if isinstance(t, RandomCropCatMax))
    assert not crop_step.unused_offsets, "MMSeg drew more crop windows than ours"
    # What the network sees: our uint8 batch normalised on the device, as SegmentationModel does.
    normalised = (got["image"].float() - mm["mean"]) / mm["std"]
    assert normalised.shape == mm["inputs"].shape
    one_level = float((1.0 / mm["std"]).max()) + 1e-5
    assert float((normalised - mm["inputs"]).abs().max()) <= one_level
    assert torch.equal(got["mask"].long(), mm["mask"])


@pytest.mark.parametrize("seed", range(6))
def test_mmseg_train_pipeline_on_real_tiles(mmseg_ref, numpy_draws, real_tiles, seed: int) -> None:
    check_train_pipeline(mmseg_ref, numpy_draws, real_tiles, seed, 512, seed)


@pytest.mark.parametrize("seed", range(4))
def test_mmseg_train_pipeline_on_generated_tiles(mmseg_ref, numpy_draws, generated_tiles, seed: int) -> None:
    check_train_pipeline(mmseg_ref, numpy_draws, generated_tiles, seed % len(generated_tiles), 64, seed)


def test_mmseg_test_pipeline_on_real_tiles(mmseg_ref, real_tiles) -> None:
    from mmcv.transforms import Compose

    pipeline = Compose([mmseg_ref.build(c) for c in mmseg_ref.loveda().test_pipeline[:-1]])
    ours_eval = LoveDASegmentation(real_tiles.root, "train", "rural", eval_transforms())
    for index in range(3):
        path = ours_eval.files[index]["image"]
        mm = pipeline({"img_path": str(path), "seg_map_path": str(path).replace("images_png", "masks_png"),
                       "reduce_zero_label": True, "seg_fields": []})
        got = ours_eval[index]
        assert torch.equal(got["image"], rgb(mm["img"]))
        assert torch.equal(got["mask"], torch.from_numpy(mm["gt_seg_map"]))
