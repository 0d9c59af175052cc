"""Pretrained weights: offline loading from the caches and from files, safely, and its errors.

Weight files are made here with the real key layouts (torchvision, smp, timm/torchgeo) and
random values, placed where the caches would hold them (under a temporary TORCH_HOME and
HF_HOME), and the loaded tensors are compared with the saved ones. The network is blocked
for every test of this folder (tests/models/conftest.py).
"""

from __future__ import annotations

import os
import pathlib
import pickle
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from torch import nn

from loveda_utils.errors import WeightsError
from loveda_utils.models import build_model, get_spec

Batch = Callable[..., torch.Tensor]
Stats = tuple[torch.Tensor, torch.Tensor]


def randomized(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The same keys and shapes with fresh random values (so equality proves loading)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if key.endswith("running_var"):  # must stay positive
            out[key] = torch.rand(value.shape, generator=gen, dtype=value.dtype) + 0.5
        elif value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=gen, dtype=value.dtype)
        else:
            out[key] = value.clone()
    return out


def assert_loaded(module: nn.Module, saved: dict[str, torch.Tensor], prefix: str = "") -> None:
    loaded = module.state_dict()
    floats = [k for k, v in loaded.items() if v.is_floating_point()]
    assert floats
    for key in floats:
        torch.testing.assert_close(loaded[key], saved[prefix + key], rtol=0, atol=0, msg=key)


def hub_file(caches: dict[str, Path], url: str) -> Path:
    path = caches["checkpoints"] / os.path.basename(urlparse(url).path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def timm_resnet_state(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in torchgeo's format: a timm ResNet, classifier included."""
    import timm

    return randomized(timm.create_model(arch, in_chans=3).state_dict(), seed)


# --------------------------------------------------------------------------- ImageNet weights


@pytest.mark.parametrize(
    ("name", "arch", "file_name"),
    [
        ("lraspp_mobilenet_v3_large", "mobilenet_v3_large", "mobilenet_v3_large-8738ca79.pth"),
        ("fcn_resnet50", "resnet50", "resnet50-0676ba61.pth"),
    ],
)
def test_torchvision_imagenet_backbone_from_hub_cache(
    caches: dict[str, Path], imagenet_0_255: Stats, name: str, arch: str, file_name: str
) -> None:
    import torchvision

    saved = randomized(getattr(torchvision.models, arch)().state_dict())
    path = caches["checkpoints"] / file_name
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    model = build_model(name, pretrained="imagenet")
    prefix = "features." if arch.startswith("mobilenet") else ""
    assert_loaded(model.net.backbone, saved, prefix)
    assert model.pretrained == "imagenet" and "ImageNet" in model.normalization
    torch.testing.assert_close(model.mean.flatten(), imagenet_0_255[0])


@pytest.mark.parametrize(
    ("name", "encoder"), [("unet_resnet18", "resnet18"), ("segformer_mit_b0", "mit_b0")]
)
def test_smp_imagenet_encoder_from_hf_cache(
    caches: dict[str, Path], name: str, encoder: str
) -> None:
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders, get_encoder

    settings = encoders[encoder]["pretrained_settings"]["imagenet"]
    repo = "models--" + settings["repo_id"].replace("/", "--")
    path = caches["hf"] / repo / "snapshots" / settings["revision"] / "model.safetensors"
    path.parent.mkdir(parents=True)
    saved = randomized(get_encoder(encoder).state_dict())
    save_file({k: v.contiguous() for k, v in saved.items()}, str(path))
    model = build_model(name, pretrained="imagenet")
    assert_loaded(model.net.encoder, saved)
    assert model.pretrained == "imagenet"


# --------------------------------------------------------------------------- torchgeo weights


def test_timm_resnet_keys_are_torchvision_keys() -> None:
    """The mapping torchgeo (timm) -> smp/torchvision encoders relies on this."""
    import timm
    from segmentation_models_pytorch.encoders import get_encoder

    for arch in ("resnet18", "resnet50"):
        timm_state = timm.create_model(arch).state_dict()
        smp_state = get_encoder(arch).state_dict()
        assert set(timm_state) - set(smp_state) == {"fc.weight", "fc.bias"}
        assert set(smp_state) <= set(timm_state)
        assert all(timm_state[k].shape == v.shape for k, v in smp_state.items())


@pytest.mark.parametrize(
    ("name", "pretrained", "weights", "arch", "div255"),
    [
        (
            "unet_resnet18_ssl4eo_moco",
            "default",
            "ResNet18_Weights.SENTINEL2_RGB_MOCO",
            "resnet18",
            True,
        ),
        (
            "unet_resnet18",
            "SENTINEL2_RGB_MOCO",
            "ResNet18_Weights.SENTINEL2_RGB_MOCO",
            "resnet18",
            True,
        ),
        (
            "deeplabv3plus_resnet18_seco",
            "default",
            "ResNet18_Weights.SENTINEL2_RGB_SECO",
            "resnet18",
            False,
        ),
        (
            "upernet_resnet50_satlas",
            "default",
            "ResNet50_Weights.SENTINEL2_SI_RGB_SATLAS",
            "resnet50",
            True,
        ),
        (
            "deeplabv3_resnet50",
            "ResNet50_Weights.FMOW_RGB_GASSL",
            "ResNet50_Weights.FMOW_RGB_GASSL",
            "resnet50",
            False,
        ),
    ],
)
def test_torchgeo_weights_from_hub_cache(
    caches: dict[str, Path],
    imagenet_0_255: Stats,
    name: str,
    pretrained: str,
    weights: str,
    arch: str,
    div255: bool,
) -> None:
    from torchgeo.models import get_weight

    saved = timm_resnet_state(arch)
    torch.save(saved, hub_file(caches, get_weight(weights).url))
    model = build_model(name, pretrained=pretrained)
    backbone = model.net.backbone if name == "deeplabv3_resnet50" else model.net.encoder
    assert_loaded(backbone, saved)
    assert model.pretrained == weights
    if div255:
        torch.testing.assert_close(model.mean.flatten(), torch.zeros(3))
        torch.testing.assert_close(model.std.flatten(), torch.full((3,), 255.0))
        assert "x/255" in model.normalization
    else:
        torch.testing.assert_close(model.mean.flatten(), imagenet_0_255[0])
        torch.testing.assert_close(model.std.flatten(), imagenet_0_255[1])


def test_torchgeo_weights_from_hf_cache(caches: dict[str, Path]) -> None:
    from torchgeo.models import ResNet18_Weights

    url = ResNet18_Weights.SENTINEL2_RGB_MOCO.url  # https://hf.co/<repo>/resolve/<rev>/<file>
    owner, repo, _, revision, file_name = urlparse(url).path.strip("/").split("/")
    path = caches["hf"] / f"models--{owner}--{repo}" / "snapshots" / revision / file_name
    path.parent.mkdir(parents=True)
    saved = timm_resnet_state("resnet18", seed=3)
    torch.save(saved, path)
    model = build_model("unet_resnet18_ssl4eo_moco", pretrained="default")
    assert_loaded(model.net.encoder, saved)


def test_random_init_of_an_eo_entry_uses_imagenet_statistics(imagenet_0_255: Stats) -> None:
    model = build_model("unet_resnet50_ssl4eo_moco")
    assert model.pretrained == "none"
    torch.testing.assert_close(model.mean.flatten(), imagenet_0_255[0])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "pretrained", "expected"),
    [
        ("deeplabv3_resnet50", "imagenet",
         ["resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth"]),
        ("lraspp_mobilenet_v3_large", "imagenet", ["mobilenet_v3_large-8738ca79.pth"]),
        ("unet_resnet50", "imagenet", ["smp-hub/resnet50.imagenet", "model.safetensors"]),
        ("unet_resnet50_ssl4eo_moco", "default",
         ["resnet50_sentinel2_rgb_moco-2b57ba8b.pth", "https://hf.co/torchgeo/resnet50_sentinel2_rgb_moco/"]),
    ],
)  # fmt: skip
def test_missing_weights_offline_name_the_file_and_where_to_put_it(
    caches: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    pretrained: str,
    expected: list[str],
) -> None:
    from torchvision.models._api import WeightsEnum

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("get_state_dict would download")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse)
    with pytest.raises(WeightsError) as info:
        build_model(name, pretrained=pretrained)
    message = str(info.value)
    for text in expected:
        assert text in message
    folder = (
        caches["hf"]
        if get_spec(name).family == "smp" and pretrained == "imagenet"
        else caches["checkpoints"]
    )
    assert str(folder) in message


@pytest.mark.parametrize(
    ("name", "pretrained", "expected"),
    [
        ("unet_resnet18", "ResNet50_Weights.SENTINEL2_RGB_MOCO", ["ResNet50_Weights.SENTINEL2_RGB_MOCO", "resnet18"]),
        ("unet_resnet50", "ResNet50_Weights.SENTINEL2_ALL_MOCO", ["SENTINEL2_ALL_MOCO", "13 input channels"]),
        ("unet_resnet18", "LANDSAT_TM_TOA_MOCO", ["ResNet18_Weights.LANDSAT_TM_TOA_MOCO", "7 input channels"]),
        ("segformer_mit_b0", "SENTINEL2_RGB_MOCO", ["mit_b0", "SENTINEL2_RGB_MOCO"]),
        ("unet_resnet50", "NOT_A_WEIGHT", ["NOT_A_WEIGHT", "ResNet50_Weights.SENTINEL2_RGB_MOCO"]),
    ],
)  # fmt: skip
def test_weights_not_fitting_the_backbone(name: str, pretrained: str, expected: list[str]) -> None:
    with pytest.raises(WeightsError) as info:
        build_model(name, pretrained=pretrained)
    for text in expected:
        assert text in str(info.value)


@pytest.mark.parametrize("content", ["garbage", "tensor", "no_tensors"])
def test_unreadable_weight_files_name_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "weights.pth"
    if content == "garbage":
        path.write_bytes(b"\x00\x13not a pickle at all\xff" * 10)
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        torch.save({"epoch": 3, "note": "x"}, path)
    with pytest.raises(WeightsError) as info:
        build_model("unet_resnet18", pretrained=str(path))
    assert str(path) in str(info.value)
    with pytest.raises(WeightsError, match="does not exist"):
        build_model("unet_resnet18", pretrained=str(tmp_path / "missing.pth"))


# --------------------------------------------------------------------------- files


def test_full_state_dict_round_trips_with_its_normalisation(
    caches: dict[str, Path], tmp_path: Path, uint8_batch: Batch
) -> None:
    from torchgeo.models import ResNet18_Weights

    torch.save(
        timm_resnet_state("resnet18"), hub_file(caches, ResNet18_Weights.SENTINEL2_RGB_MOCO.url)
    )
    trained = build_model("unet_resnet18_ssl4eo_moco", pretrained="default").eval()
    # Lightning layout: {"state_dict": {"model.<key>": ...}, ...}
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save(
        {"epoch": 1, "state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, ckpt
    )
    # Built as the plain entry: the checkpoint's x/255 normalisation must come along.
    restored = build_model("unet_resnet18", pretrained=str(ckpt)).eval()
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert restored.pretrained == str(ckpt.resolve())
    assert "last.ckpt" in restored.normalization
    x = uint8_batch(seed=4)
    with torch.inference_mode():
        torch.testing.assert_close(restored(x), trained(x))


def test_full_state_dict_with_aux_head_loads_into_an_inference_model(
    tmp_path: Path, uint8_batch: Batch
) -> None:
    trained = build_model("deeplabv3_mobilenet_v3_large").eval()
    path = tmp_path / "dlv3.pth"
    torch.save(trained.state_dict(), path)
    restored = build_model("deeplabv3_mobilenet_v3_large", pretrained=path, aux_loss=False).eval()
    x = uint8_batch(seed=5)
    with torch.inference_mode():
        torch.testing.assert_close(restored(x), trained(x))


def test_bare_network_state_dict_counts_as_full(tmp_path: Path) -> None:
    trained = build_model("lraspp_mobilenet_v3_large").eval()
    path = tmp_path / "lraspp.pth"
    torch.save({f"module.{k}": v for k, v in trained.net.state_dict().items()}, path)
    restored = build_model("lraspp_mobilenet_v3_large", pretrained=str(path)).eval()
    assert_loaded(restored.net, trained.net.state_dict())
    assert "not stored" in restored.normalization


def test_full_state_dict_for_another_head_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "six_classes.pth"
    torch.save(build_model("unet_resnet18", num_classes=6).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        build_model("unet_resnet18", pretrained=str(path))
    assert str(path) in str(info.value) and "segmentation_head" in str(info.value)


@pytest.mark.parametrize("layout", ["moco_checkpoint", "smp_encoder"])
def test_backbone_file_with_prefixes(tmp_path: Path, imagenet_0_255: Stats, layout: str) -> None:
    saved = timm_resnet_state("resnet18", seed=6)
    path = tmp_path / "backbone.pth"
    if layout == "moco_checkpoint":  # DDP-wrapped, nested, classifier included
        torch.save({"state_dict": {f"module.backbone.{k}": v for k, v in saved.items()}}, path)
    else:  # what `{"encoder." + k: v}` of an smp model looks like, classifier dropped
        torch.save({f"encoder.{k}": v for k, v in saved.items() if not k.startswith("fc.")}, path)
    model = build_model("unet_resnet18", pretrained=str(path))
    assert_loaded(model.net.encoder, saved)
    assert model.pretrained == str(path.resolve())
    torch.testing.assert_close(model.mean.flatten(), imagenet_0_255[0])
    assert "ImageNet statistics assumed" in model.normalization


def test_backbone_file_that_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(timm_resnet_state("resnet50"), path)
    with pytest.raises(WeightsError) as info:
        build_model("unet_resnet18", pretrained=str(path))
    message = str(info.value)
    assert str(path) in message and "resnet18" in message and "Shape mismatches" in message


# --------------------------------------------------------------------------- safety


class TouchOnUnpickle:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code in a weights file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return pathlib.Path.touch, (self.marker,)


def _malicious_file(path: Path, marker: Path, layout: str) -> Path:
    payload = TouchOnUnpickle(marker)
    if layout == "top":
        torch.save(payload, path)
    elif layout == "inside_checkpoint":  # real tensors beside it, as a doctored checkpoint
        torch.save({"state_dict": {"w": torch.zeros(2)}, "callbacks": payload}, path)
    else:  # a plain (legacy, protocol 0) pickle, not written by torch.save
        with open(path, "wb") as out:
            pickle.dump({"w": payload}, out, protocol=0)
    return path


@pytest.mark.parametrize(
    ("layout", "suffix"),
    [("top", ".pth"), ("inside_checkpoint", ".ckpt"), ("legacy_pickle", ".pkl")],
)
def test_a_malicious_pickle_is_refused_without_running_it(
    tmp_path: Path, layout: str, suffix: str
) -> None:
    marker = tmp_path / "code_ran"
    path = _malicious_file(tmp_path / f"weights{suffix}", marker, layout)
    # The file really is malicious: an unsafe load runs its code (done here, on our own file).
    if layout == "legacy_pickle":
        with open(path, "rb") as file:
            pickle.load(file)
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(WeightsError) as info:
        build_model("unet_resnet18", pretrained=str(path))
    assert not marker.exists(), "loading the weights ran code from the file"
    message = str(info.value)
    assert str(path) in message and "cannot be loaded safely" in message
    assert "weights_only" not in message  # never the advice to load it unsafely
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_safetensors_files_load_through_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    saved = timm_resnet_state("resnet18", seed=7)
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in saved.items()}, str(path))
    model = build_model("unet_resnet18", pretrained=str(path))
    assert_loaded(model.net.encoder, saved)

    # A pickle renamed .safetensors is not unpickled at all: safetensors rejects its header.
    marker = tmp_path / "code_ran"
    fake = _malicious_file(tmp_path / "fake.safetensors", marker, "top")
    with pytest.raises(WeightsError) as info:
        build_model("unet_resnet18", pretrained=str(fake))
    assert not marker.exists() and str(fake) in str(info.value)


def test_a_family_without_imagenet_weights_says_what_to_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loveda_utils.models import weights

    monkeypatch.delitem(weights.IMAGENET_SOURCES, "smp")
    with pytest.raises(WeightsError, match=r"'unet_resnet18'.*'smp' has no ImageNet.*'default'"):
        build_model("unet_resnet18", pretrained="imagenet")


def test_weights_without_a_normalisation_name_the_table_to_extend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The message named ``loveda_utils.models.weights.EO_NORMALIZATION``; the table is defined
    (and its reasons written) in ``loveda_utils.models.normalization`` since it moved there."""
    from loveda_utils.models import normalization, weights

    monkeypatch.setattr(weights, "EO_NORMALIZATION", {})  # as for weights no entry covers
    with pytest.raises(WeightsError, match=r"dataset 'SSL4EO-S12'.*add an entry to "
                       r"loveda_utils\.models\.normalization\.EO_NORMALIZATION\.$"):
        build_model("unet_resnet18_ssl4eo_moco", pretrained="default")
    assert "SSL4EO-S12" in normalization.EO_NORMALIZATION
