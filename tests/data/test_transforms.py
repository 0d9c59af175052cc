"""Transforms keep image and mask aligned, follow MMSeg's parameters and can be switched per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from loveda_utils.data.classes import IGNORE_INDEX
from loveda_utils.data.transforms import (
    PadTo,
    PhotometricDistortion,
    RandomCropCatMax,
    RandomRescale,
    ToPlainTensors,
    ToTVTensors,
    crop_fits,
    eval_transforms,
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


def test_pad_fills_image_with_zero_and_mask_with_ignore() -> None:
    sample = ToTVTensors()(labelled_sample(size=48))
    out = PadTo(64)(sample)
    assert out["image"].shape == (3, 64, 64)
    assert (out["mask"][48:, :] == IGNORE_INDEX).all() and (out["mask"][:, 48:] == IGNORE_INDEX).all()
    assert (out["image"][:, 48:, :] == 0).all()
    assert torch.equal(out["mask"][:48, :48], sample["mask"])


def test_rescale_follows_mmseg_scale() -> None:
    # MMSeg at crop 512: scale (2048, 512), ratio 0.5..2.0 -> a 1024 tile becomes 256..1024 px.
    step = RandomRescale((2048, 512), (0.5, 2.0))
    sizes = {tuple(step.make_params([tv_tensors.Image(torch.zeros(3, 1024, 1024))])["size"]) for _ in range(200)}
    sides = [s[0] for s in sizes]
    assert min(sides) >= 256 and max(sides) <= 1024 and max(sides) - min(sides) > 500
    assert all(h == w for h, w in sizes)


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
