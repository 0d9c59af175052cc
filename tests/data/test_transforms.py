"""Transforms keep image and mask aligned, follow MMSeg's parameters and can be switched per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from loveda_utils.data.classes import IGNORE_INDEX
from loveda_utils.data.opencv_ops import hsv_to_rgb_cv2, resize_linear_cv2, rgb_to_hsv_cv2
from loveda_utils.data.transforms import (
    IMAGENET_PAD_FILL,
    PadTo,
    PhotometricDistortion,
    RandomCropCatMax,
    RandomRescale,
    ToPlainTensors,
    ToTVTensors,
    crop_fits,
    describe,
    eval_transforms,
    pad_fill_for,
    train_transforms,
)
from loveda_utils.errors import ConfigError

#: A distinct red level per label, so the image says which label each pixel should carry.
RED = torch.tensor([10, 45, 80, 115, 150, 185, 220], dtype=torch.uint8)


def labelled_sample(size: int = 128, block: int = 16, seed: int = 0) -> dict:
    """Asymmetric blocky mask (no flip or shift maps it onto itself) and an image encoding it."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 7, (size // block, size // block), generator=g, dtype=torch.uint8)
    mask = small.repeat_interleave(block, 0).repeat_interleave(block, 1)
    image = torch.stack([RED[mask.long()], torch.full_like(mask, 128), torch.arange(size, dtype=torch.uint8)
                         .expand(size, size).contiguous()])
    return {"image": image, "mask": mask, "name": "x.png"}


def alignment(sample: dict) -> float:
    """Share of labelled interior pixels whose image red level matches their mask label."""
    mask, red = sample["mask"].long(), sample["image"][0].long()
    labelled = mask != IGNORE_INDEX
    # Interior pixels only: bilinear resizing blends colours across block edges.
    m = mask.float()[None, None]
    interior = (torch.nn.functional.max_pool2d(m, 5, 1, 2) == -torch.nn.functional.max_pool2d(-m, 5, 1, 2))[0, 0]
    keep = labelled & interior
    if keep.sum() == 0:
        return 1.0
    expected = RED.long()[mask.clamp(max=6)]
    return ((red - expected).abs() <= 2)[keep].float().mean().item()


@pytest.mark.parametrize("seed", range(8))
def test_train_pipeline_keeps_image_and_mask_aligned(seed: int) -> None:
    torch.manual_seed(seed)
    pipeline = train_transforms(64, photometric=False)
    out = pipeline(labelled_sample())
    assert out["image"].shape == (3, 64, 64) and out["mask"].shape == (64, 64)
    assert out["image"].dtype == torch.uint8 and out["mask"].dtype == torch.uint8
    assert type(out["image"]) is torch.Tensor and out["name"] == "x.png"
    assert alignment(out) > 0.98


def test_alignment_check_catches_a_one_sided_flip() -> None:
    sample = ToTVTensors()(labelled_sample())
    flipped_image_only = dict(sample, image=v2.functional.horizontal_flip(sample["image"]))
    assert alignment(ToPlainTensors()(flipped_image_only)) < 0.6
    both = v2.RandomHorizontalFlip(p=1.0)(sample)
    assert alignment(ToPlainTensors()(both)) == 1.0


def test_flip_moves_both() -> None:
    sample = labelled_sample()
    out = train_transforms(128, resize=False, crop=False, photometric=False, flip=v2.RandomHorizontalFlip(p=1.0))(sample)
    assert torch.equal(out["mask"], sample["mask"].flip(-1))
    assert torch.equal(out["image"], sample["image"].flip(-1))


def test_pad_fills_image_with_the_mean_colour_and_mask_with_ignore() -> None:
    # MMSeg pads after normalisation with 0: the mean colour, not black.
    sample = ToTVTensors()(labelled_sample(size=48))
    out = PadTo(64)(sample)
    assert out["image"].shape == (3, 64, 64)
    assert (out["mask"][48:, :] == IGNORE_INDEX).all() and (out["mask"][:, 48:] == IGNORE_INDEX).all()
    fill = torch.tensor(IMAGENET_PAD_FILL, dtype=torch.uint8).view(3, 1)
    assert IMAGENET_PAD_FILL == (124, 116, 104)
    assert (out["image"][:, 48:, :].reshape(3, -1) == fill).all()
    assert torch.equal(out["mask"][:48, :48], sample["mask"])
    assert torch.equal(out["image"][:, :48, :48], sample["image"])
    normalised = (out["image"][:, 60, 60].float() / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert normalised.abs().max() < 0.01


def test_pad_fill_follows_the_model_normalisation() -> None:
    assert pad_fill_for([123.675, 116.28, 103.53]) == IMAGENET_PAD_FILL
    assert pad_fill_for(torch.zeros(1, 3, 1, 1)) == (0, 0, 0)  # x/255 models: 0 is the mean
    pipeline = train_transforms(64, pad_fill=(0, 0, 0), resize=False, photometric=False)
    assert "image_fill=(0, 0, 0)" in describe(pipeline)[-2]
    with pytest.raises(ConfigError, match="0..255"):
        pad_fill_for([0.485, 0.456, 406.0])


def test_rescale_follows_mmseg_scale() -> None:
    # MMSeg at crop 512: scale (2048, 512), ratio 0.5..2.0 -> a 1024 tile becomes 256..1024 px.
    step = RandomRescale((2048, 512), (0.5, 2.0))
    sizes = {tuple(step.make_params([tv_tensors.Image(torch.zeros(3, 1024, 1024))])["size"]) for _ in range(200)}
    sides = [s[0] for s in sizes]
    assert min(sides) >= 256 and max(sides) <= 1024 and max(sides) - min(sides) > 500
    assert all(h == w for h, w in sizes)


def test_rescale_floors_the_target_scale_like_mmcv() -> None:
    # mmcv: scale = (int(2048 * r), int(512 * r)) = (1434, 358) at r = 0.7003 -> a 358 px side
    # (rounding 358.55 instead would give 359).
    step = RandomRescale((2048, 512), (0.5, 2.0))
    assert step.output_size(0.7003, (1024, 1024)) == [358, 358]
    assert step.output_size(0.7003, (1024, 700)) == [524, 358]
    assert step.output_size(2.0, (1024, 1024)) == [1024, 1024]


def test_rescale_resamples_mask_with_nearest() -> None:
    torch.manual_seed(0)
    out = train_transforms(64, crop=False, flip=False, photometric=False, pad=False)(labelled_sample())
    assert set(torch.unique(out["mask"]).tolist()) <= set(range(7))


def test_cat_max_ratio_avoids_single_class_crops() -> None:
    mask = torch.zeros(256, 256, dtype=torch.uint8)
    mask[:, 224:] = 3  # one narrow strip of a second class
    sample = ToTVTensors()({"image": torch.zeros(3, 256, 256, dtype=torch.uint8), "mask": mask})

    def mixed_share(step) -> float:
        torch.manual_seed(0)
        mixed = 0
        for _ in range(200):
            top, left, h, w = step.make_params([sample["image"], sample["mask"]])["box"]
            window = mask[top : top + h, left : left + w]
            counts = torch.bincount(window.reshape(-1).long(), minlength=7)
            mixed += int(counts.max() / counts.sum() < 0.75)
        return mixed / 200

    assert mixed_share(RandomCropCatMax(64, 0.75)) > mixed_share(RandomCropCatMax(64, 1.0)) + 0.2


def test_cat_max_ratio_checks_ten_windows_then_keeps_the_eleventh() -> None:
    # Every window holds one class: MMSeg checks 10 windows, then takes an 11th unchecked.
    sample = ToTVTensors()({"image": torch.zeros(3, 64, 64, dtype=torch.uint8),
                            "mask": torch.full((64, 64), 3, dtype=torch.uint8)})
    step = RandomCropCatMax(32, 0.75)
    boxes = [(i, i, 32, 32) for i in range(20)]
    drawn = iter(boxes)
    step.sample_box = lambda h, w: next(drawn)
    assert step.make_params([sample["image"], sample["mask"]])["box"] == boxes[10]
    assert RandomCropCatMax(32).checks == 10


def test_photometric_draws_integer_hue_shifts_like_mmseg() -> None:
    torch.manual_seed(0)
    step = PhotometricDistortion()
    hues = {step.make_params([])["hue"] for _ in range(2000)} - {None}
    assert all(isinstance(h, int) for h in hues)
    assert min(hues) == -18 and max(hues) == 17  # numpy's randint(-18, 18)


def test_photometric_truncates_each_step_like_mmseg() -> None:
    image = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    params = {"brightness": 0.7, "contrast_first": True, "contrast": 1.004, "saturation": None, "hue": None}
    # 100 + 0.7 -> 100 (truncated), * 1.004 -> 100.4 -> 100; rounding once gives 101.
    assert (PhotometricDistortion.apply_mmseg(image, params) == 100).all()
    assert (PhotometricDistortion.apply_fast(image, params) == 101).all()


def test_photometric_saturation_keeps_the_value_channel() -> None:
    # OpenCV's HSV keeps V = max(R, G, B); torchvision's blend with luma grey does not.
    image = torch.tensor([[200, 40, 90], [30, 180, 60], [90, 90, 250]], dtype=torch.uint8).T.reshape(3, 1, 3)
    params = {"brightness": None, "contrast_first": True, "contrast": None, "saturation": 0.5, "hue": None}
    mmseg = PhotometricDistortion.apply_mmseg(image, params)
    fast = PhotometricDistortion.apply_fast(image, params)
    assert ((mmseg.amax(0).int() - image.amax(0).int()).abs() <= 1).all()
    assert ((fast.amax(0).int() - image.amax(0).int()).abs() > 10).any()
    assert ((mmseg.amin(0).int() - image.amin(0).int()) > 10).all()  # desaturated


def test_opencv_hsv_of_primaries_and_round_trip() -> None:
    primaries = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [128, 128, 128]],
                             dtype=torch.uint8).T.reshape(3, 1, 5)
    hsv = rgb_to_hsv_cv2(primaries)
    assert hsv[0, 0].tolist() == [0, 60, 120, 30, 0]  # OpenCV hue: degrees / 2
    assert hsv[1, 0].tolist() == [255, 255, 255, 255, 0] and hsv[2, 0].tolist() == [255, 255, 255, 255, 128]
    back = hsv_to_rgb_cv2(hsv)
    assert ((back.int() - primaries.int()).abs() <= 1).all()


def test_opencv_resize_halving_and_constant_images() -> None:
    image = torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8).expand(3, 8, 8).contiguous()
    half = resize_linear_cv2(image, (4, 4))
    expected = (image.view(3, 4, 2, 4, 2).int().sum((2, 4)) + 2) >> 2  # OpenCV's 2x2 box average
    assert torch.equal(half, expected.to(torch.uint8))
    flat = torch.full((3, 50, 70), 77, dtype=torch.uint8)
    assert (resize_linear_cv2(flat, (33, 41)) == 77).all() and resize_linear_cv2(flat, (33, 41)).shape == (3, 33, 41)


def test_fidelity_is_recorded_and_checked() -> None:
    lines = describe(train_transforms(64))
    assert any("RandomRescale" in line and "fidelity=mmseg" in line for line in lines)
    assert any("PhotometricDistortion" in line and "fidelity=mmseg" in line for line in lines)
    fast = describe(train_transforms(64, fidelity="fast"))
    assert sum("fidelity=fast" in line for line in fast) == 2
    with pytest.raises(ConfigError, match="fidelity='exact'"):
        train_transforms(64, fidelity="exact")


def test_photometric_changes_image_only() -> None:
    torch.manual_seed(3)
    sample = ToTVTensors()(labelled_sample())
    step = PhotometricDistortion()
    outs = [step(sample) for _ in range(4)]
    assert all(torch.equal(o["mask"], sample["mask"]) for o in outs)
    assert any(not torch.equal(o["image"], sample["image"]) for o in outs)
    assert all(o["image"].dtype == torch.uint8 for o in outs)


def test_steps_switch_and_replace() -> None:
    names = [type(t).__name__ for t in train_transforms(64).transforms]
    assert names == ["ToTVTensors", "RandomRescale", "RandomCropCatMax", "RandomHorizontalFlip",
                     "PhotometricDistortion", "PadTo", "ToPlainTensors"]
    names = [type(t).__name__ for t in train_transforms(64, photometric=False, flip=v2.RandomVerticalFlip()).transforms]
    assert "PhotometricDistortion" not in names and "RandomVerticalFlip" in names
    with pytest.raises(ConfigError, match="pipeline step"):
        train_transforms(64, flip="yes")


def test_normalization_step_and_eval_pipeline() -> None:
    sample = labelled_sample()
    plain = eval_transforms()(sample)
    assert torch.equal(plain["image"], sample["image"]) and torch.equal(plain["mask"], sample["mask"])
    normed = eval_transforms(normalization=True)(sample)
    assert normed["image"].dtype == torch.float32 and torch.equal(normed["mask"], sample["mask"])
    expected = (sample["image"][0].float() / 255 - 0.485) / 0.229
    assert torch.allclose(normed["image"][0], expected, atol=1e-5)


def test_same_seed_same_crops() -> None:
    pipeline = train_transforms(64)
    torch.manual_seed(5)
    a = pipeline(labelled_sample())
    torch.manual_seed(5)
    b = pipeline(labelled_sample())
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_crop_larger_than_tile_refused() -> None:
    crop_fits(64, (64, 64))
    with pytest.raises(ConfigError, match=r"crop_size=512 is larger than the tiles \(256x256"):
        crop_fits(512, (256, 256))
    with pytest.raises(ConfigError, match="crop_size"):
        RandomCropCatMax(0)


def test_real_tile_alignment(real_sample) -> None:
    """On a real 1024 tile: the crop/flip/pad geometry applied to mask matches the image's."""
    from loveda_utils.data.dataset import LoveDASegmentation

    sample = LoveDASegmentation(real_sample, "train", "rural")[0]
    # Encode coordinates in the image so we can tell where each output pixel came from.
    yy, xx = torch.meshgrid(torch.arange(1024), torch.arange(1024), indexing="ij")
    coded = {"image": torch.stack([(yy // 4).to(torch.uint8), (xx // 4).to(torch.uint8), torch.zeros_like(yy, dtype=torch.uint8)]),
             "mask": sample["mask"]}
    torch.manual_seed(0)
    out = train_transforms(512, resize=False, photometric=False)(coded)
    y = out["image"][0].long() * 4
    x = out["image"][1].long() * 4
    valid = out["mask"] != IGNORE_INDEX
    agree = (sample["mask"][y, x] == out["mask"])[valid].float().mean()
    assert agree > 0.97
    assert np.isfinite(agree.item())
