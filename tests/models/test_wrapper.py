"""The wrapper and builder: every registry model builds offline and keeps the forward contract."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from loveda_utils.data.classes import NUM_CLASSES
from loveda_utils.errors import ConfigError, UnknownModelError
from loveda_utils.models import MODELS, SegmentationModel, available_models, build_model
from loveda_utils.models.registry import FAMILIES
from loveda_utils.models.wrapper import NET_FAMILIES

Batch = Callable[..., torch.Tensor]
Stats = tuple[torch.Tensor, torch.Tensor]


def test_every_family_has_a_builder() -> None:
    assert set(FAMILIES) == set(NET_FAMILIES)


@pytest.mark.parametrize("name", available_models())
def test_every_model_builds_and_runs(name: str, uint8_batch: Batch, imagenet_0_255: Stats) -> None:
    model = build_model(name).eval()
    assert isinstance(model, SegmentationModel) and model.spec is MODELS[name]
    assert model.pretrained == "none" and model.num_classes == NUM_CLASSES
    torch.testing.assert_close(model.mean.flatten(), imagenet_0_255[0])
    torch.testing.assert_close(model.std.flatten(), imagenet_0_255[1])
    aux_calls = []
    aux_head = getattr(model.net, "aux_classifier", None)
    if aux_head is not None:
        aux_head.register_forward_hook(lambda *args: aux_calls.append(1))
    x = uint8_batch()
    with torch.inference_mode():
        logits = model(x)
        assert not aux_calls, "the inference forward must not run the aux head"
        train_logits, aux = model.forward_train(x)
    assert logits.shape == (1, NUM_CLASSES, 64, 64) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(train_logits, logits)
    if MODELS[name].has_aux:
        assert model.aux_loss and aux is not None and aux.shape == (1, NUM_CLASSES, 64, 64)
        assert len(aux_calls) == 1
    else:
        assert not model.aux_loss and aux is None


def test_normalisation_happens_inside_on_uint8_and_float(
    uint8_batch: Batch, imagenet_0_255: Stats
) -> None:
    model = build_model("lraspp_mobilenet_v3_large").eval()
    mean, std = (s.view(1, 3, 1, 1) for s in imagenet_0_255)
    x = uint8_batch(seed=1)
    with torch.inference_mode():
        from_uint8 = model(x)
        from_float = model(x.float())
        by_hand = model.net((x.float() - mean) / std)
    torch.testing.assert_close(from_uint8, from_float)
    torch.testing.assert_close(from_uint8, by_hand["out"])
    assert "mean" in model.state_dict() and "std" in model.state_dict()


def test_channels_last_autocast_and_dtype_moves(uint8_batch: Batch) -> None:
    model = build_model("deeplabv3plus_resnet18").eval()
    x = uint8_batch(seed=2)
    with torch.inference_mode():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        cl = model(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
        model = model.to(torch.float64)
        double = model(x)
    torch.testing.assert_close(cl, reference, rtol=1e-4, atol=1e-4)
    assert mixed.shape == reference.shape and torch.isfinite(mixed).all()
    assert model.mean.dtype == torch.float64 and double.dtype == torch.float64
    torch.testing.assert_close(double.float(), reference, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ["segformer_mit_b0", "fcn_resnet50", "unet_resnet18"])
def test_sizes_not_divisible_by_the_stride(name: str, uint8_batch: Batch) -> None:
    model = build_model(name).eval()
    with torch.inference_mode():
        logits, _ = model.forward_train(uint8_batch(72, 88))
    assert logits.shape == (1, NUM_CLASSES, 72, 88)


def test_backbone_module_is_where_backbone_weights_go() -> None:
    tv = build_model("fcn_resnet50")
    assert tv.backbone_module() is tv.net.backbone
    smp = build_model("unet_resnet18")
    assert smp.backbone_module() is smp.net.encoder


def test_bad_arguments(uint8_batch: Batch) -> None:
    with pytest.raises(UnknownModelError, match="Did you mean 'unet_resnet50'"):
        build_model("unet_resnet51")
    with pytest.raises(ConfigError, match="aux_loss"):
        build_model("unet_resnet18", aux_loss=True)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("unet_resnet18", num_classes=0)
    model = build_model("fcn_resnet50", aux_loss=False)
    assert not model.aux_loss and model.forward_train(uint8_batch(32, 32))[1] is None
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(1, 4, 32, 32, dtype=torch.uint8))
