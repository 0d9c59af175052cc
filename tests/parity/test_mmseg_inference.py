"""Sliding-window and multi-scale + flip inference against MMSeg 1.2.2's own.

MMSeg's ``EncoderDecoder.slide_inference``, ``BaseSegmentor.postprocess_result`` and
``SegTTAModel.merge_preds`` run unchanged on the same logits as ours: only the network behind
them is replaced (``encode_decode``, the ``module`` of the TTA wrapper), by the one network both
sides share.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import write_tree
from torch import nn

from loveda_utils.data.classes import NUM_CLASSES
from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.evaluation.inference import MS_FLIP_SCALES, predict_ms_flip, predict_slide


class TinyNet(nn.Module):
    """A seeded 3x3 convolution over 0..255 images: logits that vary with the pixels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, NUM_CLASSES, 3, padding=1)
        self.seen: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.detach().clone())
        logits = self.conv(images.float() / 64.0)
        self.outputs.append(logits.detach().clone())
        return logits


@pytest.fixture(scope="module")
def generated_tile(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    root = write_tree(tmp_path_factory.mktemp("gen") / "loveda", splits=("Val",), scenes=("Urban",),
                      n=1, size=160, seed=5)
    return LoveDASegmentation(root, "val", "urban")[0]["image"]


@pytest.fixture(scope="module")
def real_tile(loveda_tiles: Path) -> torch.Tensor:
    return LoveDASegmentation(loveda_tiles, "train", "rural")[0]["image"]


@pytest.mark.parametrize(
    "window, stride, source",
    [((512, 512), (341, 341), "real"), ((1024, 1024), (768, 768), "real"), ((384, 512), (300, 200), "real"),
     ((64, 64), (48, 48), "generated"), ((96, 64), (40, 64), "generated"), ((256, 256), (128, 128), "generated")],
)
def test_mmseg_slide_inference(mmseg_ref, real_tile, generated_tile, window, stride, source) -> None:
    from mmengine.config import ConfigDict
    from mmseg.models.segmentors import EncoderDecoder

    image = (real_tile if source == "real" else generated_tile)[None]
    net = TinyNet().eval()
    segmentor = SimpleNamespace(
        test_cfg=ConfigDict(mode="slide", crop_size=window, stride=stride),
        out_channels=NUM_CLASSES,
        encode_decode=lambda crop, metas: net(crop),
    )
    with torch.no_grad():
        theirs = EncoderDecoder.slide_inference(segmentor, image.float(), [{"img_shape": image.shape[-2:]}])
        ours = predict_slide(net, image, window, stride)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_mmseg_tta_images_and_merge(mmseg_ref, loveda_tiles) -> None:
    """MMSeg's LoveDA ``tta_pipeline`` feeds the network what ours does; ``merge_preds`` on our
    passes' logits gives our labels."""
    from mmseg.models.segmentors import BaseSegmentor, SegTTAModel

    dataset = LoveDASegmentation(loveda_tiles, "train", "rural")
    image = dataset[1]["image"][None]
    net = TinyNet().eval()
    with torch.no_grad():
        probs = predict_ms_flip(net, image, MS_FLIP_SCALES, flip=True)

    cfg = mmseg_ref.loveda().tta_pipeline
    assert [t.scale_factor for t in cfg[1].transforms[0]] == list(MS_FLIP_SCALES)
    load, tta = mmseg_ref.build(cfg[0]), mmseg_ref.build(cfg[1])
    path = str(dataset.files[1]["image"])
    augmented = tta(load({"img_path": path, "seg_map_path": path.replace("images_png", "masks_png"),
                          "reduce_zero_label": True, "seg_fields": []}))
    # Same passes in the same order: each scale, unflipped then flipped.
    assert len(augmented["inputs"]) == len(net.seen) == 2 * len(MS_FLIP_SCALES)
    for seen, packed in zip(net.seen, augmented["inputs"], strict=True):
        theirs = packed[[2, 1, 0]]  # BGR -> RGB, uint8 resized by OpenCV
        assert seen.shape[-2:] == theirs.shape[-2:]
        # Ours resizes the image in float (no uint8 rounding in between): within a grey level.
        assert float((seen[0].float() - theirs.float()).abs().max()) <= 1.0

    segmentor = SimpleNamespace(align_corners=False)
    samples = [
        BaseSegmentor.postprocess_result(segmentor, logits, [sample])[0]
        for logits, sample in zip(net.outputs, augmented["data_samples"], strict=True)
    ]
    tta_model = SimpleNamespace(module=SimpleNamespace(out_channels=NUM_CLASSES))
    merged = SegTTAModel.merge_preds(tta_model, [samples])[0].pred_sem_seg.data
    assert torch.equal(probs.argmax(dim=1), merged.reshape(probs.shape[0], *probs.shape[2:]))
