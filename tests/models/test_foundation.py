"""EO foundation transformers: Swin V2 (SatlasPretrain), Scale-MAE ViT-L/16, DOFA ViT-B/16.

Weight files are made here from torchgeo's own model builders with ``weights=None`` (the
real key layout of torchgeo's files) and random values, saved where the torch hub cache
would hold them (under a temporary TORCH_HOME) or given by path; the loaded tensors are
compared with the saved ones. The network is blocked for the whole module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from models.test_weights import hub_file, randomized, timm_resnet_state
from torch import nn

from loveda_utils.data.classes import NUM_CLASSES
from loveda_utils.errors import ConfigError, WeightsError
from loveda_utils.models import MODELS, build_model, get_spec
from loveda_utils.models.foundation import (
    DOFA_RGB_WAVELENGTHS_UM,
    DOFAEncoder,
    FoundationUPerNet,
    ScaleMAEEncoder,
    SwinV2Encoder,
    gsd_sincos_pos_embed,
)
from loveda_utils.models.necks import Feature2Pyramid
from loveda_utils.models.weights import weight_files

Batch = Callable[..., torch.Tensor]
Stats = tuple[torch.Tensor, torch.Tensor]

#: Registry entry -> (torchgeo weights, torchgeo builder making a file in their layout).
ENTRIES = {
    "upernet_swin_v2_b_satlas_naip": ("Swin_V2_B_Weights.NAIP_RGB_SI_SATLAS", "swin_v2_b"),
    "upernet_swin_v2_b_satlas_naip_mi": ("Swin_V2_B_Weights.NAIP_RGB_MI_SATLAS", "swin_v2_b"),
    "upernet_swin_v2_b_satlas_s2": ("Swin_V2_B_Weights.SENTINEL2_SI_RGB_SATLAS", "swin_v2_b"),
    "upernet_swin_v2_t_satlas_s2": ("Swin_V2_T_Weights.SENTINEL2_SI_RGB_SATLAS", "swin_v2_t"),
    "upernet_vit_l16_scalemae": ("ScaleMAELarge16_Weights.FMOW_RGB", "scalemae_large_patch16"),
    "upernet_vit_b16_dofa": ("DOFABase16_Weights.DOFA_MAE", "dofa_base_patch16_224"),
}
#: Encoder tensors a torchgeo file has but the segmentation encoder does not use.
UNUSED = {
    "swin_v2_b": {"norm", "head"},
    "swin_v2_t": {"norm", "head"},
    "scalemae_large_patch16": {"pos_embed", "norm", "fc_norm", "head"},
    "dofa_base_patch16_224": {"fc_norm", "head"},
}


def torchgeo_state(builder: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the layout of torchgeo's weight files, with random values."""
    import torchgeo.models

    return randomized(getattr(torchgeo.models, builder)(weights=None).state_dict(), seed)


#: The tensors saved in each file of ``torchgeo_files`` (kept to compare against).
_SAVED: dict[Path, dict[str, torch.Tensor]] = {}


@pytest.fixture(scope="module")
def torchgeo_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One saved torchgeo-layout file per builder, made on first use (ViT-L's is 1.2 GB)."""
    folder = tmp_path_factory.mktemp("torchgeo_files")

    class Files(dict[str, Path]):
        def __missing__(self, builder: str) -> Path:
            path = folder / f"{builder}.pth"
            _SAVED[path] = torchgeo_state(builder)
            torch.save(_SAVED[path], path)
            self[builder] = path
            return path

    yield Files()
    _SAVED.clear()


def saved_tensors(path: Path) -> dict[str, torch.Tensor]:
    return _SAVED[path]


def in_hub_cache(caches: dict[str, Path], url: str, source: Path) -> None:
    """Put ``source`` where the torch hub cache keeps ``url`` (a symlink: no 1.2 GB copy)."""
    hub_file(caches, url).symlink_to(source)


def assert_encoder_loaded(model: nn.Module, saved: dict[str, torch.Tensor], builder: str) -> None:
    """Every encoder tensor equals the file's; the file's unused tensors are the expected."""
    encoder = model.net.encoder
    loaded = encoder.state_dict()
    assert set(saved) - set(loaded) == {
        k for k in saved if k.split(".")[0] in UNUSED[builder]
    }  # fmt: skip
    assert set(loaded) <= set(saved)
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)


def div255(model: nn.Module) -> bool:
    return bool((model.std.flatten() == 255).all() and (model.mean.flatten() == 0).all())


@pytest.fixture(scope="module")
def small_nets() -> dict[str, FoundationUPerNet]:
    """Randomly initialised networks of the two cheaper architectures, built once."""
    return {
        "swin": build_model("upernet_swin_v2_t_satlas_s2").net.eval(),
        "vit": build_model("upernet_vit_b16_dofa").net.eval(),
    }


# --------------------------------------------------------------------------- registry


def test_entries_are_registered_with_their_torchgeo_weights(caches: dict[str, Path]) -> None:
    from torchgeo.models import get_weight

    foundation = {name for name, spec in MODELS.items() if spec.family == "torchgeo"}
    assert foundation == set(ENTRIES)
    paths = set()
    for name, (weights, _) in ENTRIES.items():
        spec = get_spec(name)
        assert spec.default_pretrained == weights and spec.method == "UPerNet"
        assert spec.tags == {"eo", "mmseg"}
        assert get_weight(weights).meta["model"] == spec.encoder
        # What fetch-weights downloads for the entry: torchgeo's file, in the torch hub cache.
        [file] = weight_files(name)
        assert file.url == get_weight(weights).url and file.weights == weights
        assert file.path == caches["checkpoints"] / file.url.rsplit("/", 1)[-1]
        paths.add(file.path)
    assert len(paths) == len(ENTRIES)  # each entry needs its own file
    assert weight_files("upernet_vit_b16_dofa", "none") == []


# --------------------------------------------------------------------------- forward contract
# Every entry builds and runs at 64 px in tests/models/test_wrapper.py; loaded weights
# run at 64 px and odd sizes below. 512 px (the training crop): one entry per torchgeo
# builder (the entries of one builder differ only in their weights), through the wrapper
# (uint8 in, normalisation inside).


@pytest.mark.parametrize(
    "name",
    [
        "upernet_swin_v2_t_satlas_s2",
        "upernet_swin_v2_b_satlas_naip",
        "upernet_vit_b16_dofa",
        "upernet_vit_l16_scalemae",
    ],
)
def test_forward_at_512_px(uint8_batch: Batch, name: str) -> None:
    model = build_model(name).eval()
    with torch.inference_mode():
        logits = model(uint8_batch(512, 512))
    assert logits.shape == (1, NUM_CLASSES, 512, 512) and torch.isfinite(logits).all()


def test_pyramid_levels_are_1_4_to_1_32(small_nets: dict[str, FoundationUPerNet]) -> None:
    for net in small_nets.values():
        with torch.inference_mode():
            levels = net.neck(net.encoder(torch.zeros(1, 3, 128, 96)))
        assert [tuple(f.shape[-2:]) for f in levels] == [(32, 24), (16, 12), (8, 6), (4, 3)]
        assert [f.shape[1] for f in levels] == list(net.encoder.out_channels)


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "name",
    [
        "upernet_swin_v2_b_satlas_naip",
        "upernet_swin_v2_t_satlas_s2",
        "upernet_vit_l16_scalemae",
        "upernet_vit_b16_dofa",
    ],
)  # one per builder; every entry's own file name is checked offline below
def test_default_weights_from_the_hub_cache_load_and_run(
    caches: dict[str, Path],
    torchgeo_files: dict[str, Path],
    uint8_batch: Batch,
    imagenet_0_255: Stats,
    name: str,
) -> None:
    from torchgeo.models import get_weight

    weights, builder = ENTRIES[name]
    in_hub_cache(caches, get_weight(weights).url, torchgeo_files[builder])
    model = build_model(name, pretrained="default").eval()
    assert_encoder_loaded(model, saved_tensors(torchgeo_files[builder]), builder)
    assert model.pretrained == weights
    if "SATLAS" in weights:
        assert div255(model) and "x/255" in model.normalization
    else:
        torch.testing.assert_close(model.mean.flatten(), imagenet_0_255[0])
        torch.testing.assert_close(model.std.flatten(), imagenet_0_255[1])
    with torch.inference_mode():
        logits = model(uint8_batch(64, 64))
        odd, aux = model.forward_train(uint8_batch(72, 40))  # padded to 96 x 64, cropped
    assert logits.shape == (1, NUM_CLASSES, 64, 64) and torch.isfinite(logits).all()
    assert odd.shape == (1, NUM_CLASSES, 72, 40) and aux is None


def test_short_weights_name_resolves_against_the_backbone(
    caches: dict[str, Path], torchgeo_files: dict[str, Path]
) -> None:
    from torchgeo.models import Swin_V2_T_Weights

    url = Swin_V2_T_Weights.SENTINEL2_MI_RGB_SATLAS.url
    in_hub_cache(caches, url, torchgeo_files["swin_v2_t"])
    model = build_model("upernet_swin_v2_t_satlas_s2", pretrained="SENTINEL2_MI_RGB_SATLAS")
    assert model.pretrained == "Swin_V2_T_Weights.SENTINEL2_MI_RGB_SATLAS"
    assert_encoder_loaded(model, saved_tensors(torchgeo_files["swin_v2_t"]), "swin_v2_t")


@pytest.mark.parametrize("name", ["upernet_swin_v2_t_satlas_s2", "upernet_vit_b16_dofa"])
def test_backbone_file_by_path_in_the_real_layout(tmp_path: Path, name: str) -> None:
    _, builder = ENTRIES[name]
    saved = torchgeo_state(builder, seed=2)
    path = tmp_path / f"{builder}.pth"
    torch.save({"state_dict": saved}, path)  # checkpoint-style nesting is unwrapped
    model = build_model(name, pretrained=str(path))
    assert_encoder_loaded(model, saved, builder)
    assert model.pretrained == str(path.resolve())
    assert path.name in model.normalization
    assert get_spec(name).default_pretrained in model.normalization
    assert div255(model) == ("swin" in builder)


def test_full_model_state_dict_round_trips(tmp_path: Path) -> None:
    model = build_model("upernet_swin_v2_t_satlas_s2")
    saved = randomized(model.state_dict(), seed=4)
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in saved.items()}}, path)
    loaded = build_model("upernet_swin_v2_t_satlas_s2", pretrained=path)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)


def test_a_swin_t_file_for_swin_b_weights_is_refused_by_name(
    caches: dict[str, Path], torchgeo_files: dict[str, Path]
) -> None:
    """Same keys as Swin-V2-B, other widths and depth: refused, naming file and model."""
    from torchgeo.models import Swin_V2_B_Weights

    url = Swin_V2_B_Weights.NAIP_RGB_SI_SATLAS.url
    in_hub_cache(caches, url, torchgeo_files["swin_v2_t"])
    with pytest.raises(WeightsError) as info:
        build_model("upernet_swin_v2_b_satlas_naip", pretrained="default")
    message = str(info.value)
    assert "aerial_swinb_si-e4169eb1.pth" in message
    assert "features.0.0.weight: (96, 3, 4, 4) in file, (128, 3, 4, 4) in model" in message
    assert "'upernet_swin_v2_b_satlas_naip'" in message and "swin_v2_b backbone" in message


@pytest.mark.parametrize(
    ("name", "builder"),
    [
        ("upernet_vit_b16_dofa", "resnet50"),
        ("upernet_swin_v2_t_satlas_s2", "dofa_base_patch16_224"),
    ],
)
def test_a_file_for_another_backbone_is_refused_by_name(
    tmp_path: Path, torchgeo_files: dict[str, Path], name: str, builder: str
) -> None:
    if builder == "resnet50":
        path = tmp_path / "resnet50.pth"
        torch.save(timm_resnet_state("resnet50"), path)
    else:
        path = torchgeo_files[builder]
    with pytest.raises(WeightsError) as info:
        build_model(name, pretrained=path)
    message = str(info.value)
    assert str(path.resolve()) in message and repr(name) in message
    assert f"{get_spec(name).encoder} backbone" in message and "0 of" in message


@pytest.mark.parametrize(
    "name",
    [
        "upernet_swin_v2_b_satlas_naip_mi",
        "upernet_swin_v2_t_satlas_s2",
        "upernet_vit_l16_scalemae",
        "upernet_vit_b16_dofa",
    ],
)  # one per builder; each entry resolves its own URL (test_entries_are_registered_...)
def test_missing_weights_offline_name_the_file_url_and_folder(
    caches: dict[str, Path], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from torchgeo.models import get_weight
    from torchvision.models._api import WeightsEnum

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("get_state_dict would download")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse)
    url = get_weight(ENTRIES[name][0]).url
    with pytest.raises(WeightsError) as info:
        build_model(name, pretrained="default")
    message = str(info.value)
    assert url in message and url.rsplit("/", 1)[-1] in message
    assert str(caches["checkpoints"]) in message
    assert f"python -m loveda_utils fetch-weights --models {name}`" in message


@pytest.mark.parametrize(
    ("name", "pretrained", "expected"),
    [
        ("upernet_vit_b16_dofa", "imagenet", ["'torchgeo' has no ImageNet weights", "'default'"]),
        ("upernet_swin_v2_t_satlas_s2", "Swin_V2_B_Weights.NAIP_RGB_SI_SATLAS", ["swin_v2_t"]),
        ("upernet_swin_v2_t_satlas_s2", "SENTINEL2_SI_MS_SATLAS", ["9 input channels"]),
    ],
)
def test_weights_that_cannot_apply_are_refused(
    name: str, pretrained: str, expected: list[str]
) -> None:
    with pytest.raises(WeightsError) as info:
        build_model(name, pretrained=pretrained)
    for text in expected:
        assert text in str(info.value)


def test_dofa_normalisation_records_the_wavelengths(
    caches: dict[str, Path], torchgeo_files: dict[str, Path]
) -> None:
    from torchgeo.models import DOFABase16_Weights

    in_hub_cache(caches, DOFABase16_Weights.DOFA_MAE.url, torchgeo_files["dofa_base_patch16_224"])
    model = build_model("upernet_vit_b16_dofa", pretrained="default")
    assert "R, G, B = 0.665, 0.56, 0.49 um" in model.normalization
    torch.testing.assert_close(model.net.encoder.wavelengths, torch.tensor(DOFA_RGB_WAVELENGTHS_UM))
    assert "wavelengths" not in " ".join(model.state_dict())  # a build choice, not a weight


# --------------------------------------------------------------------------- encoders


def test_scalemae_encoder_matches_torchgeo_scalemae() -> None:
    """Same tokens as torchgeo's ScaleMAE at its own (square) size; a small ScaleMAE."""
    from torchgeo.models.scale_mae import ScaleMAE

    reference = ScaleMAE(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2)
    reference.eval()
    encoder = ScaleMAEEncoder(out_indices=(1, 2), drop_path=0.0, vit=reference).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ours = reference.norm(encoder(x)[-1].flatten(2).transpose(1, 2))
        theirs = reference.forward_features(x)[:, 1:]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert encoder.state_dict().keys() <= reference.state_dict().keys()


def test_gsd_position_embedding_on_a_non_square_grid() -> None:
    """Token (r, c) of a 2 x 3 grid gets the embedding of (r, c) in torchgeo's 3 x 3 grid."""
    from torchgeo.models.scale_mae import get_2d_sincos_pos_embed_with_resolution

    square = get_2d_sincos_pos_embed_with_resolution(8, 3, torch.tensor([0.5]))[0]
    ours = gsd_sincos_pos_embed(8, 2, 3, res=0.5)
    torch.testing.assert_close(ours, square.reshape(3, 3, 8)[:2].reshape(6, 8))


def test_dofa_encoder_matches_torchgeo_dofa() -> None:
    """Same tokens as torchgeo's DOFA at 224 px, and resized positions elsewhere."""
    from torchgeo.models.dofa import DOFA

    reference = DOFA(embed_dim=32, depth=2, num_heads=2).eval()
    with torch.no_grad():
        reference.pos_embed.normal_()  # torchgeo leaves it zero until weights load
    encoder = DOFAEncoder(out_indices=(1,), drop_path=0.0, dofa=reference).eval()
    captured: list[torch.Tensor] = []
    reference.blocks[-1].register_forward_hook(lambda m, i, out: captured.append(out))
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        ours = encoder(x)[0]
        reference(x, list(DOFA_RGB_WAVELENGTHS_UM))
        assert ours.shape == (1, 32, 14, 14)
        torch.testing.assert_close(ours.flatten(2).transpose(1, 2), captured[0][:, 1:])
        wide = encoder(torch.randn(1, 3, 64, 96))[0]
    assert wide.shape == (1, 32, 4, 6)
    with pytest.raises(ValueError, match="4 bands"):
        encoder(torch.randn(1, 4, 64, 64))


def test_swin_stochastic_depth_is_reset() -> None:
    encoder = SwinV2Encoder("swin_v2_t", drop_path=0.3)
    rates = [m.p for m in encoder.modules() if type(m).__name__ == "StochasticDepth"]
    assert len(rates) == encoder.num_layers == 12
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3)


# --------------------------------------------------------------------------- neck


def test_feature2pyramid_scales() -> None:
    neck = Feature2Pyramid(8).eval()
    maps = [torch.randn(2, 8, 6, 4) for _ in range(4)]
    out = neck(maps)
    assert [tuple(o.shape) for o in out] == [(2, 8, 24, 16), (2, 8, 12, 8), (2, 8, 6, 4),
                                             (2, 8, 3, 2)]  # fmt: skip
    assert out[2] is maps[2]
    torch.testing.assert_close(out[3], torch.nn.functional.max_pool2d(maps[3], 2))
    with pytest.raises(ValueError, match="rescale"):
        neck(maps[:3])
    with pytest.raises(ValueError, match="0.25"):
        Feature2Pyramid(8, rescales=(4, 2, 1, 0.25))


# --------------------------------------------------------------------------- layer decay


def test_layer_decay_parameter_groups_for_a_vit(small_nets: dict[str, FoundationUPerNet]) -> None:
    net = small_nets["vit"]
    groups = net.param_groups(base_lr=1e-4, decay=0.65, weight_decay=0.05)
    params = [p for g in groups for p in g["params"]]
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert len(params) == len(trainable) and {id(p) for p in params} == {id(p) for p in trainable}
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    top = 12 + 1
    enc = net.encoder
    assert scale[id(enc.patch_embed.fclayer.w1.weight)] == pytest.approx(0.65**top)
    assert scale[id(enc.cls_token)] == pytest.approx(0.65**top) and wd[id(enc.cls_token)] == 0
    for i, block in enumerate(enc.blocks):
        assert scale[id(block.attn.qkv.weight)] == pytest.approx(0.65 ** (top - i - 1))
        assert wd[id(block.attn.qkv.weight)] == 0.05 and wd[id(block.attn.qkv.bias)] == 0
        assert wd[id(block.norm1.weight)] == 0
    head = net.segmentation_head[0].weight
    assert scale[id(head)] == 1 and scale[id(net.neck.ops[0][0].weight)] == 1
    assert all(g["lr"] == pytest.approx(1e-4 * g["lr_scale"]) for g in groups)
    assert enc.pos_embed.requires_grad is False and id(enc.pos_embed) not in scale
    with pytest.raises(ValueError, match="decay"):
        net.param_groups(1e-4, decay=0)


def test_the_wrapper_hands_out_the_networks_groups() -> None:
    model = build_model("upernet_vit_b16_dofa")
    groups = model.param_groups(base_lr=1e-4, decay=0.65, weight_decay=0.05)
    assert [g["name"] for g in groups] == [
        g["name"] for g in model.net.param_groups(1e-4, 0.65, 0.05)
    ]  # fmt: skip
    [plain] = build_model("unet_resnet18").param_groups(base_lr=0.01)
    assert plain["lr"] == 0.01 and plain["lr_scale"] == 1.0
    with pytest.raises(ConfigError, match="'unet_resnet18'.*decay=1"):
        build_model("unet_resnet18").param_groups(0.01, decay=0.65)


def test_layer_decay_layer_ids_for_swin(small_nets: dict[str, FoundationUPerNet]) -> None:
    net = small_nets["swin"]
    encoder = net.encoder
    assert encoder.depths == (2, 2, 6, 2) and encoder.num_layers == 12
    assert encoder.layer_id("features.0.0.weight") == 0
    assert encoder.layer_id("features.1.0.attn.qkv.weight") == 1
    assert encoder.layer_id("features.1.1.attn.qkv.weight") == 2
    assert encoder.layer_id("features.2.reduction.weight") == 2  # merging after stage 0
    assert encoder.layer_id("features.5.5.mlp.0.weight") == 2 + 2 + 6
    assert encoder.layer_id("features.7.1.norm1.weight") == 12
    groups = net.param_groups(base_lr=1.0, decay=0.9)
    by_name = {g["name"]: g for g in groups}
    assert by_name["layer_13_decay"]["lr_scale"] == 1 and by_name["layer_0_decay"]["lr"] == (
        pytest.approx(0.9**13)
    )
    no_wd = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    attn = net.encoder.features[1][0].attn
    assert id(attn.logit_scale) in no_wd and id(attn.cpb_mlp[0].weight) in no_wd
