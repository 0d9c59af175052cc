"""The model zoo's registry: one :class:`ModelSpec` per model, looked up by name or by tag.

In the style of segmentation-models-pytorch's ``create_model``: :data:`MODELS` is the one
dict of architectures (adding a model = adding one :class:`ModelSpec` entry), an unknown
name is answered with the closest and the valid names
(:class:`~loveda_utils.errors.UnknownModelError`), and :func:`models_tagged` selects models
by the tags written in their own entry (:data:`TAGS`), so that lists of models elsewhere (the
suite's profiles, the pipeline benchmark's light models) are read from the registry rather
than written out again.

This module is plain data: importing it does not import torch (the command line and the
suite plan runs from it). Building lives in :mod:`loveda_utils.models.wrapper`, weights in
:mod:`loveda_utils.models.weights`. Three families live in the registry:

* ``torchvision``: the six torchvision segmentation models (FCN, DeepLabV3, LR-ASPP).
  FCN/DeepLabV3 keep their auxiliary FCN head for training.
* ``smp``: segmentation-models-pytorch architectures (UNet, UNet++, FPN, PSPNet,
  DeepLabV3+, UPerNet, SegFormer), some with Earth-observation ResNet encoders from
  torchgeo 0.10's RGB weights (SSL4EO-S12 MoCo, SeCo, fMoW GASSL, SatlasPretrain) as their
  default weights.
* ``torchgeo``: Earth-observation foundation transformers (Swin V2 SatlasPretrain,
  Scale-MAE ViT-L/16, DOFA ViT-B/16) built by torchgeo's model builders under smp's UPerNet
  decoder (:mod:`loveda_utils.models.foundation`, which documents their input sizes and
  layer-wise lr decay). Their default weights are torchgeo's; they have no ImageNet ones.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..errors import ConfigError, UnknownModelError

__all__ = [
    "FAMILIES",
    "MODELS",
    "TAGS",
    "Family",
    "ModelSpec",
    "available_models",
    "get_spec",
    "models_tagged",
]

#: How a network is built; each family has its builder in ``wrapper.NET_FAMILIES``.
Family = Literal["torchvision", "smp", "torchgeo"]
FAMILIES: tuple[str, ...] = get_args(Family)

#: The tag vocabulary: what each tag written in an entry means. A profile of the benchmark
#: suite named like a tag runs exactly the models carrying it.
TAGS: dict[str, str] = {
    "quick": "in the suite's 'quick' CPU demo (small enough for a 2-core CPU)",
    "mmseg": "in the suite's 'mmseg' profile (MMSeg's LoveDA protocol on a GPU)",
    "cross-domain": "in the suite's 'cross-domain' profile (source-only baselines: trained on one "
                    "LoveDA domain, evaluated on both)",
    "light": "a mobile-size backbone (MobileNetV3, MiT-B0): few FLOPs per pixel",
    "eo": "defined by Earth-observation pretrained weights (its default_pretrained)",
}


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: how to build a model and how the results table names it.

    Attributes:
        name: Registry key, e.g. ``"deeplabv3plus_resnet50"``.
        method: The table's Method column (MMSeg style), e.g. ``"DeepLabV3+"``.
        backbone: The table's Backbone column (MMSeg style), e.g. ``"R-50"`` or
            ``"R-50 (SSL4EO-S12 MoCo)"``.
        family: How the network is built: ``"torchvision"``, ``"smp"`` or ``"torchgeo"``
            (:data:`FAMILIES`).
        arch: torchvision builder name (``"deeplabv3_resnet50"``) or smp architecture
            (``"DeepLabV3Plus"``).
        encoder: The backbone network: torchvision model name (``"resnet50"``,
            ``"mobilenet_v3_large"``) or smp encoder name (``"resnet50"``, ``"mit_b2"``).
            torchgeo weights must be for this network.
        default_pretrained: ``"imagenet"`` or the full torchgeo weights name the entry is
            defined by (what ``pretrained="default"`` loads).
        arch_kwargs: Extra keyword arguments of the smp architecture, as ``(name, value)``
            pairs (a tuple keeps the spec hashable).
        notes: One line for the docs.
        tags: Names from :data:`TAGS` that select this model (:func:`models_tagged`).
    """

    name: str
    method: str
    backbone: str
    family: Family
    arch: str
    encoder: str
    default_pretrained: str = "imagenet"
    arch_kwargs: tuple[tuple[str, Any], ...] = ()
    notes: str = ""
    tags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"ModelSpec {self.name!r}: family={self.family!r} is not one of {FAMILIES}"
            )
        unknown = sorted(set(self.tags) - set(TAGS))
        if unknown:
            raise ValueError(
                f"ModelSpec {self.name!r}: tags {unknown} are not in TAGS ({', '.join(TAGS)}); "
                "add them to TAGS with their meaning"
            )

    @property
    def has_aux(self) -> bool:
        """Whether the model has an auxiliary head (torchvision FCN and DeepLabV3)."""
        return self.family == "torchvision" and self.arch.startswith(("fcn_", "deeplabv3_"))


def _tv(
    name: str, method: str, backbone: str, encoder: str, notes: str, tags: str = ""
) -> ModelSpec:
    return ModelSpec(
        name, method, backbone, "torchvision", name, encoder, notes=notes,
        tags=frozenset(tags.split()),
    )  # fmt: skip


def _smp(
    name: str,
    method: str,
    backbone: str,
    arch: str,
    encoder: str,
    notes: str,
    pretrained: str = "imagenet",
    tags: str = "",
    **arch_kwargs: Any,
) -> ModelSpec:
    return ModelSpec(
        name, method, backbone, "smp", arch, encoder, pretrained, tuple(arch_kwargs.items()),
        notes, frozenset(tags.split()),
    )  # fmt: skip


def _tg(name: str, backbone: str, encoder: str, weights: str, notes: str, tags: str) -> ModelSpec:
    """A ``torchgeo`` entry: ``encoder`` is the weights' ``meta["model"]``; the head, and so
    the method, is UPerNet."""
    return ModelSpec(
        name, "UPerNet", backbone, "torchgeo", "UPerNet", encoder, weights, notes=notes,
        tags=frozenset(tags.split()),
    )  # fmt: skip


def _satlas_swin(name: str, size: str, weights: str, label: str, imagery: str) -> ModelSpec:
    """A SatlasPretrain Swin-V2 entry: ``size`` "B" or "T", torchgeo's
    ``Swin_V2_<size>_Weights.<weights>`` (``imagery``, as its docs describe it), the
    backbone's 4 stages to UPerNet; ``label`` tells the row's pretraining apart in the table."""
    return _tg(
        name, f"Swin-V2-{size} (SatlasPretrain {label})", f"swin_v2_{size.lower()}",
        f"Swin_V2_{size}_Weights.{weights}", f"SatlasPretrain {imagery}; 4 stages to UPerNet",
        tags="eo mmseg",
    )  # fmt: skip


# MMSeg's LoveDA configs use dilated "-D8" ResNets for DeepLabV3+ and PSPNet; the smp
# entries follow (output stride 8), as torchvision's FCN/DeepLabV3 do already.
_D8: dict[str, Any] = {"encoder_output_stride": 8}
_PSP_D8: dict[str, Any] = {"encoder_depth": 5, "output_stride": 8, "upsampling": 8}

#: The one registry. Adding a model = adding one entry; ``tags`` are space-separated TAGS keys.
# fmt: off
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    # torchvision: dilated ResNets (output stride 8) or MobileNetV3 (16); aux FCN head.
    _tv("fcn_resnet50", "FCN", "R-50", "resnet50", "torchvision FCN, dilated R-50, aux head",
        tags="mmseg"),
    _tv("fcn_resnet101", "FCN", "R-101", "resnet101", "torchvision FCN, dilated R-101, aux head",
        tags="mmseg"),
    _tv("deeplabv3_resnet50", "DeepLabV3", "R-50", "resnet50", "torchvision, OS 8, aux head",
        tags="mmseg cross-domain"),
    _tv("deeplabv3_resnet101", "DeepLabV3", "R-101", "resnet101", "torchvision, OS 8, aux head",
        tags="mmseg"),
    _tv("deeplabv3_mobilenet_v3_large", "DeepLabV3", "MobileNetV3-L", "mobilenet_v3_large",
        "torchvision, OS 16, aux head", tags="mmseg light"),
    _tv("lraspp_mobilenet_v3_large", "LRASPP", "MobileNetV3-L", "mobilenet_v3_large",
        "torchvision Lite R-ASPP, no aux head", tags="mmseg quick light"),
    # segmentation-models-pytorch with ImageNet encoders.
    _smp("unet_resnet18", "UNet", "R-18", "Unet", "resnet18", "smp Unet", tags="quick"),
    _smp("unet_resnet50", "UNet", "R-50", "Unet", "resnet50", "smp Unet", tags="mmseg"),
    _smp("unetplusplus_resnet50", "UNet++", "R-50", "UnetPlusPlus", "resnet50", "smp UNet++",
         tags="mmseg"),
    _smp("fpn_resnet50", "FPN", "R-50", "FPN", "resnet50", "smp FPN", tags="mmseg"),
    _smp("pspnet_resnet50", "PSPNet", "R-50", "PSPNet", "resnet50",
         "smp PSPNet on the whole dilated R-50 (OS 8, as MMSeg r50-d8)", **_PSP_D8),
    _smp("pspnet_resnet101", "PSPNet", "R-101", "PSPNet", "resnet101",
         "smp PSPNet on the whole dilated R-101 (OS 8, as MMSeg r101-d8)", tags="mmseg", **_PSP_D8),
    _smp("deeplabv3plus_resnet18", "DeepLabV3+", "R-18", "DeepLabV3Plus", "resnet18",
         "smp DeepLabV3+, OS 8", tags="quick", **_D8),
    _smp("deeplabv3plus_resnet50", "DeepLabV3+", "R-50", "DeepLabV3Plus", "resnet50",
         "smp DeepLabV3+, OS 8 (as MMSeg r50-d8)", tags="mmseg cross-domain", **_D8),
    _smp("deeplabv3plus_resnet101", "DeepLabV3+", "R-101", "DeepLabV3Plus", "resnet101",
         "smp DeepLabV3+, OS 8", tags="mmseg", **_D8),
    _smp("upernet_resnet50", "UPerNet", "R-50", "UPerNet", "resnet50", "smp UPerNet",
         tags="mmseg"),
    _smp("upernet_resnet101", "UPerNet", "R-101", "UPerNet", "resnet101", "smp UPerNet"),
    _smp("segformer_mit_b0", "SegFormer", "MiT-B0", "Segformer", "mit_b0",
         "smp SegFormer, 256-channel MLP head", tags="quick light"),
    _smp("segformer_mit_b2", "SegFormer", "MiT-B2", "Segformer", "mit_b2",
         "smp SegFormer, 768-channel MLP head as in the paper", tags="mmseg cross-domain",
         decoder_segmentation_channels=768),
    # Earth-observation ResNets from torchgeo (RGB weights only: LoveDA is RGB).
    _smp("unet_resnet18_ssl4eo_moco", "UNet", "R-18 (SSL4EO-S12 MoCo)", "Unet", "resnet18",
         "Sentinel-2 RGB, MoCo v2", "ResNet18_Weights.SENTINEL2_RGB_MOCO", tags="eo"),
    _smp("unet_resnet50_ssl4eo_moco", "UNet", "R-50 (SSL4EO-S12 MoCo)", "Unet", "resnet50",
         "Sentinel-2 RGB, MoCo v2", "ResNet50_Weights.SENTINEL2_RGB_MOCO", tags="eo mmseg"),
    _smp("deeplabv3plus_resnet50_ssl4eo_moco", "DeepLabV3+", "R-50 (SSL4EO-S12 MoCo)",
         "DeepLabV3Plus", "resnet50", "Sentinel-2 RGB, MoCo v2; OS 8",
         "ResNet50_Weights.SENTINEL2_RGB_MOCO", tags="eo mmseg", **_D8),
    _smp("deeplabv3plus_resnet18_seco", "DeepLabV3+", "R-18 (SeCo)", "DeepLabV3Plus", "resnet18",
         "Seasonal Contrast, Sentinel-2 RGB; OS 8", "ResNet18_Weights.SENTINEL2_RGB_SECO",
         tags="eo", **_D8),
    _smp("deeplabv3plus_resnet50_seco", "DeepLabV3+", "R-50 (SeCo)", "DeepLabV3Plus", "resnet50",
         "Seasonal Contrast, Sentinel-2 RGB; OS 8", "ResNet50_Weights.SENTINEL2_RGB_SECO",
         tags="eo mmseg", **_D8),
    _smp("unet_resnet50_gassl", "UNet", "R-50 (fMoW GASSL)", "Unet", "resnet50",
         "geography-aware SSL, fMoW RGB", "ResNet50_Weights.FMOW_RGB_GASSL", tags="eo mmseg"),
    _smp("upernet_resnet50_gassl", "UPerNet", "R-50 (fMoW GASSL)", "UPerNet", "resnet50",
         "geography-aware SSL, fMoW RGB", "ResNet50_Weights.FMOW_RGB_GASSL", tags="eo"),
    _smp("upernet_resnet50_satlas", "UPerNet", "R-50 (SatlasPretrain)", "UPerNet", "resnet50",
         "SatlasPretrain Sentinel-2 RGB, single image", "ResNet50_Weights.SENTINEL2_SI_RGB_SATLAS",
         tags="eo mmseg"),
    # A whole torchgeo UNet (encoder and decoder) as the initialisation, a new 7-class head.
    _smp("unet_resnet50_tcd", "UNet", "R-50 (OAM-TCD UNet)", "Unet", "resnet50",
         "whole UNet from OAM-TCD tree cover (10 cm aerial RGB, CC-BY-NC-4.0 weights)",
         "Unet_Weights.OAM_RGB_RESNET50_TCD", tags="eo mmseg"),
    # Earth-observation foundation transformers (torchgeo builders + smp UPerNet decoder).
    _satlas_swin("upernet_swin_v2_b_satlas_naip", "B", "NAIP_RGB_SI_SATLAS", "aerial",
                 "NAIP aerial RGB, single image"),
    _satlas_swin("upernet_swin_v2_b_satlas_naip_mi", "B", "NAIP_RGB_MI_SATLAS", "aerial MI",
                 "NAIP aerial RGB, multi-image backbone used per image"),
    _satlas_swin("upernet_swin_v2_b_satlas_s2", "B", "SENTINEL2_SI_RGB_SATLAS", "S2",
                 "Sentinel-2 RGB, single image"),
    _satlas_swin("upernet_swin_v2_t_satlas_s2", "T", "SENTINEL2_SI_RGB_SATLAS", "S2",
                 "Sentinel-2 RGB, single image"),
    _tg("upernet_vit_l16_scalemae", "ViT-L/16 (Scale-MAE fMoW)", "vit_large_patch16",
        "ScaleMAELarge16_Weights.FMOW_RGB",
        "Scale-MAE fMoW RGB; blocks 7/11/15/23, Feature2Pyramid neck, UPerNet", tags="eo mmseg"),
    _tg("upernet_vit_b16_dofa", "ViT-B/16 (DOFA)", "dofa_base_patch16_224",
        "DOFABase16_Weights.DOFA_MAE",
        "DOFA MAE, LoveDA RGB as Sentinel-2 B4/B3/B2 wavelengths; blocks 3/5/7/11, "
        "Feature2Pyramid neck, UPerNet", tags="eo mmseg"),
)}
# fmt: on


def available_models() -> list[str]:
    """Names of all registry models, in registry order (torchvision, smp, EO backbones)."""
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; unknown names raise ``UnknownModelError`` listing all."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(MODELS), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(
            f"model={name!r} is not in the registry.{hint} "
            f"Valid names: {', '.join(available_models())}."
        ) from None


def models_tagged(tag: str) -> list[str]:
    """Names of the models whose entry carries ``tag``, in registry order.

    Raises:
        ConfigError: ``tag`` is not in :data:`TAGS` (the message lists the valid tags).
    """
    if tag not in TAGS:
        valid = "; ".join(f"{name!r}: {meaning}" for name, meaning in TAGS.items())
        raise ConfigError(f"tag={tag!r} is not a registry tag. Valid tags: {valid}.")
    return [name for name, spec in MODELS.items() if tag in spec.tags]
