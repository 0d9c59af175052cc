"""A whole torchgeo UNet as the initialisation of a registry UNet: OAM-TCD's tree-cover UNet R-50.

The weight files are made here by torchgeo's own ``unet`` model builder with ``weights=None``
(the key layout of torchgeo's file) and random values, saved where the torch hub cache keeps
the weights' URL (under a temporary TORCH_HOME); the network is blocked (tests/models/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from models.test_weights import hub_file, randomized

from loveda_utils.data.classes import NUM_CLASSES
from loveda_utils.errors import WeightsError
from loveda_utils.models import build_model, get_spec
from loveda_utils.models.whole_network import CLASS_HEAD

NAME = "unet_resnet50_tcd"
WEIGHTS = "Unet_Weights.OAM_RGB_RESNET50_TCD"
Batch = Callable[..., torch.Tensor]


def tcd_state(encoder: str = "resnet50", seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the layout of torchgeo's OAM-TCD UNet files (two classes)."""
    import torchgeo.models

    net = torchgeo.models.unet(weights=None, classes=2, encoder_name=encoder, in_channels=3)
    return randomized(net.state_dict(), seed)


def in_hub_cache(caches: dict[str, Path], state: dict[str, torch.Tensor]) -> Path:
    from torchgeo.models import get_weight

    path = hub_file(caches, get_weight(WEIGHTS).url)
    torch.save(state, path)
    return path


def test_the_entry_is_a_unet_r50_defined_by_the_tcd_weights(caches: dict[str, Path]) -> None:
    from torchgeo.models import get_weight

    from loveda_utils.models.weights import weight_files

    spec = get_spec(NAME)
    meta = get_weight(WEIGHTS).meta
    assert (spec.family, spec.arch, spec.encoder) == ("smp", "Unet", meta["encoder"])
    assert spec.default_pretrained == WEIGHTS and spec.tags == {"eo", "mmseg"}
    [file] = weight_files(NAME)  # what fetch-weights fetches, where the loader reads it
    assert file.url == get_weight(WEIGHTS).url
    assert file.path == caches["checkpoints"] / "unet_resnet50_oam_rgb_tcd-c648cc7d.pth"


def test_the_whole_unet_loads_and_only_the_class_head_starts_anew(
    caches: dict[str, Path], uint8_batch: Batch
) -> None:
    saved = tcd_state()
    in_hub_cache(caches, saved)
    model = build_model(NAME, pretrained="default").eval()
    assert model.pretrained == WEIGHTS
    loaded = model.net.state_dict()
    assert set(loaded) == set(saved)
    transferred = [k for k in loaded if not k.startswith(CLASS_HEAD)]
    assert any(k.startswith("decoder.") for k in transferred)  # the decoder too, not only the encoder
    for key in transferred:
        torch.testing.assert_close(loaded[key], saved[key], rtol=0, atol=0, msg=key)
    head = loaded[f"{CLASS_HEAD}0.weight"]
    assert head.shape[0] == NUM_CLASSES and saved[f"{CLASS_HEAD}0.weight"].shape[0] == 2
    # OAM-TCD's UNet saw 8-bit values as they are.
    assert (model.mean.flatten() == 0).all() and (model.std.flatten() == 1).all()
    assert "0..255 as they are" in model.normalization
    # Random file values blow up through 50 layers of eval-mode BatchNorm; batch statistics
    # keep the forward finite (a training step's view of the loaded network).
    with torch.no_grad():
        logits, _ = model.train().forward_train(uint8_batch(64, 64))
    assert logits.shape == (1, NUM_CLASSES, 64, 64) and torch.isfinite(logits).all()


def test_a_unet_of_another_encoder_is_refused_by_name(caches: dict[str, Path]) -> None:
    """A ResNet-34 OAM-TCD UNet where the R-50 file belongs: same key names, other shapes."""
    in_hub_cache(caches, tcd_state("resnet34"))
    with pytest.raises(WeightsError) as info:
        build_model(NAME, pretrained="default")
    message = str(info.value)
    assert "unet_resnet50_oam_rgb_tcd-c648cc7d.pth" in message and repr(NAME) in message
    assert "whole Unet with a resnet50 encoder" in message and "in file" in message


@pytest.mark.parametrize(
    ("name", "pretrained", "expected"),
    [
        ("deeplabv3plus_resnet50", WEIGHTS, "are for a U-Net with a resnet50 encoder"),
        ("unet_resnet18", WEIGHTS, "are for a U-Net with a resnet50 encoder"),
        (NAME, "Unet_Weights.SENTINEL2_2CLASS_FTW", "efficientnet-b3"),
    ],
)
def test_whole_unet_weights_fit_only_their_architecture(
    name: str, pretrained: str, expected: str
) -> None:
    with pytest.raises(WeightsError, match=expected) as info:
        build_model(name, pretrained=pretrained)
    assert repr(name) in str(info.value)


def test_missing_offline_names_the_file_url_and_folder(caches: dict[str, Path]) -> None:
    from torchgeo.models import get_weight

    url = get_weight(WEIGHTS).url
    with pytest.raises(WeightsError) as info:
        build_model(NAME, pretrained="default")
    message = str(info.value)
    assert url in message and "unet_resnet50_oam_rgb_tcd-c648cc7d.pth" in message
    assert str(caches["checkpoints"]) in message
    assert f"python -m loveda_utils fetch-weights --models {NAME}`" in message
