"""Tests of loveda_utils.evaluation.inference: whole/slide/ms+flip prediction and logits to labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pixel_net import PixelNet

from loveda_utils.data.classes import NUM_CLASSES
from loveda_utils.evaluation.inference import (
    MS_FLIP_SCALES,
    predict_ms_flip,
    predict_slide,
    predict_whole,
)

TILE = 64




class ColumnNet(PixelNet):
    """PixelNet plus a term growing with the column index: not flip-equivariant."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = super().forward(images)
        w = images.shape[-1]
        ramp = torch.linspace(0, 3, w, device=images.device)
        return logits + ramp * torch.arange(NUM_CLASSES, device=images.device).view(1, -1, 1, 1)


class ContextNet(PixelNet):
    """PixelNet plus the mean of the whole input: depends on the crop it sees."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = super().forward(images)
        return logits + logits.mean(dim=(2, 3), keepdim=True)


def images(n: int = 2, size: int = TILE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


# --- whole / slide ------------------------------------------------------------------------


def test_predict_whole_checks_the_output() -> None:
    x = images()
    assert predict_whole(PixelNet(), x).shape == (2, NUM_CLASSES, TILE, TILE)
    with pytest.raises(ValueError, match=r"returned \(2, 7, 32, 32\).*expected logits"):
        predict_whole(lambda t: torch.zeros(2, 7, 32, 32), x)
    with pytest.raises(ValueError, match="expected logits"):
        predict_whole(PixelNet(), x, num_classes=5)


def test_slide_on_a_tile_smaller_than_the_window_is_whole_inference() -> None:
    model, x = ContextNet(), images()
    slid = predict_slide(model, x, window=128, stride=96)
    assert model.calls[-1] == tuple(x.shape)  # one pass over the whole, unpadded tile
    assert len(model.calls) == 1
    assert torch.equal(slid, predict_whole(model, x))


def test_slide_with_a_local_model_equals_whole_inference() -> None:
    model, x = PixelNet(), images(size=80)
    slid = predict_slide(model, x, window=32, stride=24)
    # MMSeg's grid: (80 - 32 + 23) // 24 + 1 = 3 windows per axis, all 32x32.
    assert len(model.calls) == 9 and set(model.calls) == {(2, 3, 32, 32)}
    torch.testing.assert_close(slid, predict_whole(model, x), rtol=1e-6, atol=1e-6)


def test_slide_averages_overlapping_windows() -> None:
    # A model that sees context gives a different answer per window: the overlap average.
    model, x = ContextNet(), images(n=1, size=48)
    slid = predict_slide(model, x, window=32, stride=16)
    windows = [(0, 32), (16, 48)]
    expected = torch.zeros(1, NUM_CLASSES, 48, 48)
    count = torch.zeros(1, 1, 48, 48)
    for y1, y2 in windows:
        for x1, x2 in windows:
            expected[..., y1:y2, x1:x2] += model(x[..., y1:y2, x1:x2])
            count[..., y1:y2, x1:x2] += 1
    torch.testing.assert_close(slid, expected / count)
    assert not torch.allclose(slid, predict_whole(model, x), atol=1e-3)


def test_slide_rejects_gaps() -> None:
    with pytest.raises(ValueError, match="stride"):
        predict_slide(PixelNet(), images(), window=16, stride=32)


# --- ms + flip ----------------------------------------------------------------------------


def test_ms_flip_single_scale_without_flip_is_softmax_of_plain_inference() -> None:
    model, x = ColumnNet(), images()
    probs = predict_ms_flip(model, x, scales=(1.0,), flip=False)
    torch.testing.assert_close(probs, predict_whole(model, x).softmax(dim=1))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, TILE, TILE))


def test_flip_is_a_no_op_for_a_flip_equivariant_model() -> None:
    model, x = PixelNet(), images()
    with_flip = predict_ms_flip(model, x, scales=(1.0,), flip=True)
    assert len(model.calls) == 2
    torch.testing.assert_close(with_flip, predict_whole(model, x).softmax(dim=1))


def test_flip_averages_the_flipped_pass_for_other_models() -> None:
    model, x = ColumnNet(), images()
    with_flip = predict_ms_flip(model, x, scales=(1.0,), flip=True)
    plain = model(x).softmax(dim=1)
    flipped_back = model(x.flip(-1)).softmax(dim=1).flip(-1)
    assert not torch.allclose(plain, flipped_back, atol=1e-3)
    torch.testing.assert_close(with_flip, (plain + flipped_back) / 2)


def test_multi_scale_resizes_like_mmseg() -> None:
    model, x = ColumnNet(), images(n=1, size=50)
    probs = predict_ms_flip(model, x, scales=(0.5, 0.75, 1.25), flip=False)
    # mmcv rounds int(50 * s + 0.5): 25, 38, 63.
    assert [c[-1] for c in model.calls] == [25, 38, 63]
    expected = torch.zeros_like(probs)
    for size in (25, 38, 63):
        scaled = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
        logits = F.interpolate(model(scaled), size=(50, 50), mode="bilinear", align_corners=False)
        expected += logits.softmax(dim=1)
    torch.testing.assert_close(probs, expected / 3)
    assert MS_FLIP_SCALES == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def test_ms_flip_can_slide() -> None:
    model, x = PixelNet(), images(n=1, size=48)
    slid = predict_ms_flip(model, x, scales=(1.0,), flip=True, mode="slide", window=32, stride=16)
    torch.testing.assert_close(slid, model(x).softmax(dim=1), rtol=1e-5, atol=1e-6)


# --- evaluate on a LoveDA tree ------------------------------------------------------------


def test_cpu_labels_equal_argmax_with_ties_and_nan() -> None:
    """The CPU fast path for labels gives argmax's answer, first maximum on ties, NaN included."""
    from loveda_utils.evaluation.inference import labels_from_logits

    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (2, 7, 16, 16), generator=g).float()  # many ties
    assert torch.equal(labels_from_logits(logits).long(), logits.argmax(1))
    logits[0, 3, 4, 4] = float("nan")
    assert torch.equal(labels_from_logits(logits).long(), logits.argmax(1))
    cl = logits.contiguous(memory_format=torch.channels_last)
    assert torch.equal(labels_from_logits(cl).long(), logits.argmax(1))
