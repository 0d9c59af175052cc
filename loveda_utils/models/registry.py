"""The model zoo: one registry of segmentation models, built offline with pretrained weights.

In the style of segmentation-models-pytorch's ``create_model``: :data:`MODELS` is the one
dict of architectures (adding a model = adding one :class:`ModelSpec` entry),
:func:`build_model` builds one by name, and an unknown name is answered with the list of
valid ones (:class:`~loveda_utils.errors.UnknownModelError`).

Every model is wrapped in :class:`SegmentationModel`, which takes LoveDA batches as they
come (``uint8`` RGB ``[B, 3, H, W]``), normalises them on the device and returns logits at
the input resolution. Three families live in the registry:

* ``torchvision``: the six torchvision segmentation models (FCN, DeepLabV3, LR-ASPP).
  Always built with ``weights=None, weights_backbone=None`` so torchvision never downloads;
  FCN/DeepLabV3 keep their auxiliary FCN head for training (``forward_train``), and the
  inference path (``forward``) never runs it.
* ``smp``: segmentation-models-pytorch architectures (UNet, UNet++, FPN, PSPNet,
  DeepLabV3+, UPerNet, SegFormer), built with ``encoder_weights=None``.
* Earth-observation backbones: smp models whose ResNet encoder starts from torchgeo 0.10's
  RGB weights (SSL4EO-S12 MoCo, SeCo, fMoW GASSL, SatlasPretrain).

Weights are never downloaded. ``pretrained`` may be:

* ``"none"``: random initialisation.
* ``"imagenet"``: ImageNet backbone weights. torchvision models read torchvision's file
  (e.g. ``resnet50-0676ba61.pth``) from the torch hub cache
  (``torch.hub.get_dir()/checkpoints``); smp models read their encoder's
  ``smp-hub/<encoder>.imagenet`` ``model.safetensors`` (the repository and revision smp 0.6
  pins) from the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``), exactly as
  ``HF_HUB_OFFLINE=1`` would.
* a torchgeo weights name, ``"ResNet50_Weights.SENTINEL2_RGB_MOCO"`` or just
  ``"SENTINEL2_RGB_MOCO"`` (resolved against the model's backbone). The file named by the
  weights' URL is read from the torch hub cache (or from the Hugging Face cache when the URL
  points to the Hub). torchgeo's ResNets are timm ResNets, whose key layout is
  torchvision's, so they load into smp's and torchvision's ResNet encoders key for key
  (only the classifier ``fc`` is dropped).
* ``"default"``: the registry entry's :attr:`ModelSpec.default_pretrained`.
* a path to a state-dict file: either a full :class:`SegmentationModel` state dict (e.g. a
  Lightning checkpoint of our own training; its ``mean``/``std`` come along), or a
  backbone/encoder state dict. Common prefixes (``module.``, ``model.``, ``net.``,
  ``backbone.``, ``encoder.``, ...) are stripped and every backbone tensor must be found with
  the right shape, otherwise :class:`~loveda_utils.errors.WeightsError` lists what is
  missing and unexpected.

A missing file offline raises :class:`~loveda_utils.errors.WeightsError` at once, naming the
file, the URL (or Hub repository) to fetch it from and the folder to put it in.

Normalisation per weights
-------------------------
LoveDA tiles are 8-bit RGB (0..255). :class:`SegmentationModel` computes
``(x - mean) / std`` on the device with ``mean``/``std`` in 0..255 units, chosen per
weights so that LoveDA reaches the input distribution the weights were pre-trained on.
torchgeo's ``weights.transforms`` were read for each entry; the choice is keyed by the
weights' ``meta["dataset"]`` (:data:`_EO_NORMALIZATION`):

* ``"none"``, ``"imagenet"`` and a backbone file given by path: ImageNet statistics,
  ``mean = 255 * (0.485, 0.456, 0.406)``, ``std = 255 * (0.229, 0.224, 0.225)``.
  torchvision's and smp's ImageNet weights were trained on 8-bit RGB / 255 normalised with
  these; for random initialisation any zero-centred, unit-scale input is right and this
  keeps every "none" row comparable.
* SSL4EO-S12 MoCo RGB (``ResNet18/50_Weights.SENTINEL2_RGB_MOCO``): ``mean = 0``,
  ``std = 255``. torchgeo's transform divides by 10000, the scaling for raw 16-bit
  Sentinel-2 L1C values. The RGB weights, however, were pre-trained on SSL4EO-S12's 8-bit
  RGB release (``convert_rgb.py`` stretches each band's mean +- 2 std to 0..255) read as
  uint8 and scaled to [0, 1] by ``ToTensor``. LoveDA is 8-bit display RGB already, so / 255
  reproduces that range, whereas / 10000 would feed values about 40 times smaller than
  anything the network saw.
* SeCo (``SENTINEL2_RGB_SECO``): ImageNet statistics. torchgeo's transform stretches raw
  Sentinel-2 RGB between per-band quantiles to 0..255 (SeCo's 8-bit conversion), then
  divides by 255 and applies ImageNet mean/std; LoveDA is already 8-bit RGB, so only the
  last two steps apply.
* fMoW GASSL (``FMOW_RGB_GASSL``): ImageNet statistics; torchgeo's transform is / 255 then
  ImageNet mean/std on 8-bit fMoW RGB, exactly what LoveDA needs.
* SatlasPretrain RGB (``SENTINEL2_SI_RGB_SATLAS``, ``SENTINEL2_MI_RGB_SATLAS``):
  ``mean = 0``, ``std = 255``; the Satlas RGB models take 8-bit Sentinel-2 TCI images / 255.
* A full :class:`SegmentationModel` state dict given by path brings its own ``mean`` and
  ``std`` buffers, so a trained model is evaluated with the normalisation it was trained
  with (files without them get the entry's default normalisation, and say so).

``model.normalization`` holds the short form of the choice for the results record.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.classes import NUM_CLASSES
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError, UnknownModelError, WeightsError

if TYPE_CHECKING:
    from torchvision.models._api import WeightsEnum

__all__ = [
    "MODELS",
    "ModelSpec",
    "SegmentationModel",
    "available_models",
    "build_model",
    "get_spec",
]

Family = Literal["torchvision", "smp"]


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: how to build a model and how the results table names it.

    Attributes:
        name: Registry key, e.g. ``"deeplabv3plus_resnet50"``.
        method: The table's Method column (MMSeg style), e.g. ``"DeepLabV3+"``.
        backbone: The table's Backbone column (MMSeg style), e.g. ``"R-50"`` or
            ``"R-50 (SSL4EO-S12 MoCo)"``.
        family: ``"torchvision"`` or ``"smp"``.
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

    def __post_init__(self) -> None:
        if self.family not in ("torchvision", "smp"):
            raise ValueError(
                f"ModelSpec {self.name!r}: family={self.family!r} is not torchvision/smp"
            )

    @property
    def has_aux(self) -> bool:
        """Whether the model has an auxiliary head (torchvision FCN and DeepLabV3)."""
        return self.family == "torchvision" and self.arch.startswith(("fcn_", "deeplabv3_"))


def _tv(name: str, method: str, backbone: str, encoder: str, notes: str) -> ModelSpec:
    return ModelSpec(name, method, backbone, "torchvision", name, encoder, notes=notes)


def _smp(
    name: str,
    method: str,
    backbone: str,
    arch: str,
    encoder: str,
    notes: str,
    pretrained: str = "imagenet",
    **arch_kwargs: Any,
) -> ModelSpec:
    return ModelSpec(
        name, method, backbone, "smp", arch, encoder, pretrained, tuple(arch_kwargs.items()), notes
    )


# MMSeg's LoveDA configs use dilated "-D8" ResNets for DeepLabV3+ and PSPNet; the smp
# entries follow (output stride 8), as torchvision's FCN/DeepLabV3 do already.
_D8 = {"encoder_output_stride": 8}
_PSP_D8 = {"encoder_depth": 5, "output_stride": 8, "upsampling": 8}

#: The one registry. Adding a model = adding one entry.
# fmt: off
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    # torchvision: dilated ResNets (output stride 8) or MobileNetV3 (16); aux FCN head.
    _tv("fcn_resnet50", "FCN", "R-50", "resnet50", "torchvision FCN, dilated R-50, aux head"),
    _tv("fcn_resnet101", "FCN", "R-101", "resnet101", "torchvision FCN, dilated R-101, aux head"),
    _tv("deeplabv3_resnet50", "DeepLabV3", "R-50", "resnet50", "torchvision, OS 8, aux head"),
    _tv("deeplabv3_resnet101", "DeepLabV3", "R-101", "resnet101", "torchvision, OS 8, aux head"),
    _tv("deeplabv3_mobilenet_v3_large", "DeepLabV3", "MobileNetV3-L", "mobilenet_v3_large",
        "torchvision, OS 16, aux head"),
    _tv("lraspp_mobilenet_v3_large", "LRASPP", "MobileNetV3-L", "mobilenet_v3_large",
        "torchvision Lite R-ASPP, no aux head"),
    # segmentation-models-pytorch with ImageNet encoders.
    _smp("unet_resnet18", "UNet", "R-18", "Unet", "resnet18", "smp Unet"),
    _smp("unet_resnet50", "UNet", "R-50", "Unet", "resnet50", "smp Unet"),
    _smp("unetplusplus_resnet50", "UNet++", "R-50", "UnetPlusPlus", "resnet50", "smp UNet++"),
    _smp("fpn_resnet50", "FPN", "R-50", "FPN", "resnet50", "smp FPN"),
    _smp("pspnet_resnet50", "PSPNet", "R-50", "PSPNet", "resnet50",
         "smp PSPNet on the whole dilated R-50 (OS 8, as MMSeg r50-d8)", **_PSP_D8),
    _smp("pspnet_resnet101", "PSPNet", "R-101", "PSPNet", "resnet101",
         "smp PSPNet on the whole dilated R-101 (OS 8, as MMSeg r101-d8)", **_PSP_D8),
    _smp("deeplabv3plus_resnet18", "DeepLabV3+", "R-18", "DeepLabV3Plus", "resnet18",
         "smp DeepLabV3+, OS 8", **_D8),
    _smp("deeplabv3plus_resnet50", "DeepLabV3+", "R-50", "DeepLabV3Plus", "resnet50",
         "smp DeepLabV3+, OS 8 (as MMSeg r50-d8)", **_D8),
    _smp("deeplabv3plus_resnet101", "DeepLabV3+", "R-101", "DeepLabV3Plus", "resnet101",
         "smp DeepLabV3+, OS 8", **_D8),
    _smp("upernet_resnet50", "UPerNet", "R-50", "UPerNet", "resnet50", "smp UPerNet"),
    _smp("upernet_resnet101", "UPerNet", "R-101", "UPerNet", "resnet101", "smp UPerNet"),
    _smp("segformer_mit_b0", "SegFormer", "MiT-B0", "Segformer", "mit_b0",
         "smp SegFormer, 256-channel MLP head"),
    _smp("segformer_mit_b2", "SegFormer", "MiT-B2", "Segformer", "mit_b2",
         "smp SegFormer, 768-channel MLP head as in the paper", decoder_segmentation_channels=768),
    # Earth-observation ResNets from torchgeo (RGB weights only: LoveDA is RGB).
    _smp("unet_resnet18_ssl4eo_moco", "UNet", "R-18 (SSL4EO-S12 MoCo)", "Unet", "resnet18",
         "Sentinel-2 RGB, MoCo v2", "ResNet18_Weights.SENTINEL2_RGB_MOCO"),
    _smp("unet_resnet50_ssl4eo_moco", "UNet", "R-50 (SSL4EO-S12 MoCo)", "Unet", "resnet50",
         "Sentinel-2 RGB, MoCo v2", "ResNet50_Weights.SENTINEL2_RGB_MOCO"),
    _smp("deeplabv3plus_resnet50_ssl4eo_moco", "DeepLabV3+", "R-50 (SSL4EO-S12 MoCo)",
         "DeepLabV3Plus", "resnet50", "Sentinel-2 RGB, MoCo v2; OS 8",
         "ResNet50_Weights.SENTINEL2_RGB_MOCO", **_D8),
    _smp("deeplabv3plus_resnet18_seco", "DeepLabV3+", "R-18 (SeCo)", "DeepLabV3Plus", "resnet18",
         "Seasonal Contrast, Sentinel-2 RGB; OS 8", "ResNet18_Weights.SENTINEL2_RGB_SECO", **_D8),
    _smp("deeplabv3plus_resnet50_seco", "DeepLabV3+", "R-50 (SeCo)", "DeepLabV3Plus", "resnet50",
         "Seasonal Contrast, Sentinel-2 RGB; OS 8", "ResNet50_Weights.SENTINEL2_RGB_SECO", **_D8),
    _smp("unet_resnet50_gassl", "UNet", "R-50 (fMoW GASSL)", "Unet", "resnet50",
         "geography-aware SSL, fMoW RGB", "ResNet50_Weights.FMOW_RGB_GASSL"),
    _smp("upernet_resnet50_gassl", "UPerNet", "R-50 (fMoW GASSL)", "UPerNet", "resnet50",
         "geography-aware SSL, fMoW RGB", "ResNet50_Weights.FMOW_RGB_GASSL"),
    _smp("upernet_resnet50_satlas", "UPerNet", "R-50 (SatlasPretrain)", "UPerNet", "resnet50",
         "SatlasPretrain Sentinel-2 RGB, single image", "ResNet50_Weights.SENTINEL2_SI_RGB_SATLAS"),
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


# --------------------------------------------------------------------------- normalisation


class _Norm(NamedTuple):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    text: str


# The 0..1 statistics live in transforms.py (one place); models work in 0..255 units.
_IMAGENET = _Norm(
    tuple(255 * m for m in IMAGENET_MEAN),  # type: ignore[arg-type]
    tuple(255 * s for s in IMAGENET_STD),  # type: ignore[arg-type]
    "ImageNet mean/std on 0..255",
)
_DIV255 = (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)

#: LoveDA normalisation per torchgeo ``weights.meta["dataset"]`` (reasons: module docstring).
_EO_NORMALIZATION: dict[str, _Norm] = {
    "SSL4EO-S12": _Norm(
        *_DIV255,
        "x/255: pre-trained on SSL4EO-S12's 8-bit RGB scaled to [0, 1] "
        "(torchgeo's /10000 is for raw 16-bit Sentinel-2)",
    ),
    "SeCo Dataset": _Norm(
        _IMAGENET.mean,
        _IMAGENET.std,
        "ImageNet mean/std on 0..255: SeCo stretches Sentinel-2 RGB to 8 bits, then "
        "/255 and ImageNet mean/std",
    ),
    "fMoW Dataset": _Norm(
        _IMAGENET.mean, _IMAGENET.std, "ImageNet mean/std on 0..255 (GASSL: /255, ImageNet)"
    ),
    "SatlasPretrain": _Norm(*_DIV255, "x/255: Satlas RGB models take 8-bit TCI / 255"),
}


# --------------------------------------------------------------------------- the wrapper


class SegmentationModel(nn.Module):
    """A registry network with on-device normalisation and a uniform interface.

    ``forward(images)`` takes ``uint8`` or float RGB in 0..255, ``[B, 3, H, W]``, and
    returns logits ``[B, num_classes, H, W]`` at the input resolution; the auxiliary head
    is never run there. ``forward_train(images)`` returns ``(logits, aux_logits)`` with
    ``aux_logits`` ``None`` for models without an auxiliary head.

    smp models need sides divisible by their output stride; other sizes are padded with
    zeros after normalisation (the mean colour, as MMSeg pads) and the logits cropped back.

    Attributes:
        spec: The registry entry.
        net: The wrapped torchvision/smp network.
        num_classes: Number of output channels.
        pretrained: The weights actually loaded: ``"none"``, ``"imagenet"``, a full
            torchgeo weights name, or the resolved path of a state-dict file.
        mean, std: Buffers ``[1, 3, 1, 1]`` in 0..255 units (move with ``.to(device)``).
        normalization: Short text describing ``mean``/``std`` for the docs and records.
        aux_loss: Whether ``forward_train`` returns auxiliary logits.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        spec: ModelSpec,
        net: nn.Module,
        num_classes: int,
        norm: _Norm,
        pretrained: str = "none",
    ) -> None:
        super().__init__()
        self.spec = spec
        self.net = net
        self.num_classes = num_classes
        self.pretrained = pretrained
        self.normalization = norm.text
        self.aux_loss = getattr(net, "aux_classifier", None) is not None
        # Persistent: a saved state dict carries the normalisation it was trained with.
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1))
        self._stride = self._input_divisor(net)

    @staticmethod
    def _input_divisor(net: nn.Module) -> int:
        if getattr(net, "requires_divisible_input_shape", False):
            return int(net.encoder.output_stride)  # type: ignore[union-attr]
        return 1

    def set_normalization(self, mean: Tensor, std: Tensor, text: str) -> None:
        """Replace ``mean``/``std`` (0..255 units, 3 values each) and their description."""
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(mean).reshape(1, 3, 1, 1))
            self.std.copy_(torch.as_tensor(std).reshape(1, 3, 1, 1))
        self.normalization = text

    def normalize(self, images: Tensor) -> Tensor:
        """``(images - mean) / std`` in the buffers' dtype (float32 unless the model was cast)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be [B, 3, H, W] RGB in 0..255, got shape {tuple(images.shape)}"
            )
        return (images.to(self.mean.dtype) - self.mean) / self.std

    def _logits(self, images: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None]:
        height, width = images.shape[-2:]
        x = self.normalize(images)
        pad_h, pad_w = -height % self._stride, -width % self._stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        aux = None
        if self.spec.family == "torchvision":
            # The backbone's IntermediateLayerGetter returns the aux features for free; only
            # the aux *head* costs, so it runs only when asked for.
            features = self.net.backbone(x)
            size = x.shape[-2:]
            if hasattr(self.net, "aux_classifier"):  # FCN / DeepLabV3 (maybe without aux)
                logits = self.net.classifier(features["out"])
                if with_aux and self.net.aux_classifier is not None:
                    aux = self.net.aux_classifier(features["aux"])
                    aux = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
            else:  # LR-ASPP head takes the feature dict
                logits = self.net.classifier(features)
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        else:
            logits = self.net(x)
        if pad_h or pad_w:
            logits = logits[..., :height, :width]
            aux = aux[..., :height, :width] if aux is not None else None
        return logits, aux

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, num_classes, H, W]`` for 0..255 RGB ``images`` (no auxiliary head)."""
        return self._logits(images, with_aux=False)[0]

    def forward_train(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(logits, aux_logits or None)``, both at the input resolution."""
        return self._logits(images, with_aux=True)

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, pretrained={self.pretrained!r}"


# --------------------------------------------------------------------------- building


def build_model(
    name: str,
    num_classes: int = NUM_CLASSES,
    pretrained: str | os.PathLike[str] | None = "none",
    aux_loss: bool | None = None,
) -> SegmentationModel:
    """Build registry model ``name`` with ``pretrained`` weights, never downloading.

    Args:
        name: A registry key (see :func:`available_models`).
        num_classes: Output classes (7 for LoveDA).
        pretrained: ``"none"``, ``"imagenet"``, ``"default"`` (the entry's own weights), a
            torchgeo weights name (``"ResNet50_Weights.SENTINEL2_RGB_MOCO"`` or
            ``"SENTINEL2_RGB_MOCO"``), or a path to a state-dict file.
        aux_loss: Keep the auxiliary head (torchvision FCN/DeepLabV3 only). ``None``: yes
            for those models, no for the others.

    Returns:
        The model in training mode, on the CPU.

    Raises:
        UnknownModelError: ``name`` is not in the registry.
        WeightsError: the weights are missing offline, unreadable, or do not fit.
        ConfigError: a bad ``num_classes`` or ``aux_loss``.
    """
    spec = get_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} must be a positive integer (LoveDA: 7)")
    if aux_loss is None:
        aux_loss = spec.has_aux
    elif aux_loss and not spec.has_aux:
        raise ConfigError(
            f"aux_loss=True but model {name!r} has no auxiliary head; only the torchvision "
            "FCN/DeepLabV3 models do. Leave aux_loss=None."
        )
    net = _build_net(spec, num_classes, bool(aux_loss))
    model = SegmentationModel(spec, net, num_classes, _IMAGENET)

    choice = "none" if pretrained is None else pretrained
    if isinstance(choice, str) and choice.strip().lower() == "default":
        choice = spec.default_pretrained
    if isinstance(choice, str) and choice.strip().lower() in ("none", ""):
        model.pretrained = "none"
    elif isinstance(choice, str) and choice.strip().lower() == "imagenet":
        _load_imagenet(model)
        model.pretrained = "imagenet"
    elif _looks_like_path(choice):
        _load_file(model, Path(choice).expanduser())
    else:
        weights = _resolve_torchgeo_weights(spec, str(choice))
        _load_torchgeo(model, weights)
    return model


def _build_net(spec: ModelSpec, num_classes: int, aux_loss: bool) -> nn.Module:
    if spec.family == "torchvision":
        from torchvision.models import segmentation

        builder = getattr(segmentation, spec.arch)
        kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None}
        if spec.arch.startswith(("fcn_", "deeplabv3_")):  # LR-ASPP rejects aux_loss at all
            kwargs["aux_loss"] = aux_loss
        return builder(num_classes=num_classes, **kwargs)
    import segmentation_models_pytorch as smp

    return smp.create_model(
        spec.arch,
        encoder_name=spec.encoder,
        encoder_weights=None,
        classes=num_classes,
        **dict(spec.arch_kwargs),
    )


def _backbone(model: SegmentationModel) -> nn.Module:
    """The module pretrained backbone weights go into."""
    return model.net.backbone if model.spec.family == "torchvision" else model.net.encoder


# --------------------------------------------------------------------------- caches


def _torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` keeps its file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (not at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
        "huggingface",
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _hf_cached(repo_id: str, filename: str, revision: str) -> Path | None:
    """The cached Hub file, or None; looks on disk only (HF_HUB_OFFLINE semantics)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        repo_id, filename, cache_dir=str(_hf_hub_cache()), revision=revision
    )
    return Path(found) if isinstance(found, str) else None


def _hf_url_parts(url: str) -> tuple[str, str, str] | None:
    """``(repo_id, filename, revision)`` of a ``https://hf.co/<repo>/resolve/<rev>/<file>`` URL."""
    parsed = urlparse(url)
    if parsed.netloc not in ("hf.co", "huggingface.co"):
        return None
    parts = parsed.path.strip("/").split("/")
    if len(parts) < 5 or parts[2] != "resolve":
        return None
    return f"{parts[0]}/{parts[1]}", "/".join(parts[4:]), parts[3]


def _find_url_file(url: str, what: str) -> Path:
    """The local copy of ``url`` (torch hub cache, else HF cache), or a WeightsError."""
    target = _torch_hub_file(url)
    if target.is_file():
        return target
    hf = _hf_url_parts(url)
    if hf is not None and (cached := _hf_cached(*hf)) is not None:
        return cached
    also = (
        f" (or have it in the Hugging Face cache {_hf_hub_cache()}: repo {hf[0]}, "
        f"revision {hf[2]}, file {hf[1]})"
        if hf is not None
        else ""
    )
    raise WeightsError(
        f"{what} not found offline: expected file {target.name!r} at {target}. Nothing is "
        f"downloaded here; on a machine with internet fetch {url} and put it at {target}"
        f"{also}, e.g. `mkdir -p {target.parent} && curl -L -o {target} {url}`. The folder is "
        "torch.hub.get_dir()/checkpoints (set TORCH_HOME to move it). Or pass "
        "pretrained='none' or a path to a local state-dict file."
    )


# --------------------------------------------------------------------------- weight sources


def _load_imagenet(model: SegmentationModel) -> None:
    spec = model.spec
    if spec.family == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(spec.encoder).IMAGENET1K_V1
        path = _find_url_file(
            weights.url, f"ImageNet backbone weights {weights!r} of {spec.name!r}"
        )
        state = _read_state_dict(path)
        # torchvision MobileNetV3 keeps its layers under "features."; the segmentation
        # backbone is that Sequential itself.
        source = f"{weights!r} ({path})"
        _load_backbone(model, state, source, extra_prefixes=("features.",))
    else:
        from segmentation_models_pytorch.encoders import encoders

        settings = encoders[spec.encoder]["pretrained_settings"].get("imagenet")
        if settings is None:  # pragma: no cover - every registry encoder has ImageNet weights
            raise WeightsError(f"smp encoder {spec.encoder!r} has no 'imagenet' weights")
        repo_id, revision = settings["repo_id"], settings["revision"]
        path = _hf_cached(repo_id, "model.safetensors", revision)
        if path is None:
            cache = _hf_hub_cache()
            raise WeightsError(
                f"ImageNet encoder weights of {spec.name!r} not found offline: smp "
                f"{spec.encoder!r} reads 'model.safetensors' from the Hugging Face repo "
                f"{repo_id!r} at revision {revision}, expected under {cache} (HF_HUB_CACHE, "
                f"else $HF_HOME/hub). Nothing is downloaded here; on a machine with internet "
                f'run `python -c "from huggingface_hub import hf_hub_download; '
                f"hf_hub_download('{repo_id}', 'model.safetensors', revision='{revision}', "
                f"cache_dir='{cache}')\"` and copy that cache over. Or pass pretrained='none' "
                f"or a path to a local {spec.encoder} state-dict file."
            )
        state = _read_state_dict(path)
        _load_backbone(model, state, f"smp {repo_id}@{revision[:8]} ({path})")
    model.set_normalization(_IMAGENET.mean, _IMAGENET.std, _IMAGENET.text)


#: torchgeo weights enum per backbone network, for short names like "SENTINEL2_RGB_MOCO".
_TORCHGEO_ENUMS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet152": "ResNet152_Weights",
}


def _resolve_torchgeo_weights(spec: ModelSpec, name: str) -> WeightsEnum:
    """The torchgeo weights ``name`` (full or short) that fit ``spec``, or a WeightsError."""
    import torchgeo.models
    from torchvision.models._api import WeightsEnum

    own_enum = _TORCHGEO_ENUMS.get(spec.encoder)
    if "." in name:  # "ResNet50_Weights.X", also "torchgeo.models.ResNet50_Weights.X"
        qualifier, _, member = name.rpartition(".")
        enum_name = qualifier.rsplit(".", 1)[-1]
    elif own_enum is not None:
        enum_name, member = own_enum, name
    else:
        raise WeightsError(
            f"pretrained={name!r} for model {spec.name!r}: not 'none', 'imagenet', 'default' "
            f"or an existing file, and torchgeo has no weights for its backbone "
            f"{spec.encoder!r} ({spec.backbone}). Use 'imagenet', 'none' or a state-dict path."
        )
    enum = getattr(torchgeo.models, enum_name, None)
    if (
        not (isinstance(enum, type) and issubclass(enum, WeightsEnum))
        or member not in enum.__members__
    ):
        choices = _rgb_choices(own_enum)
        raise WeightsError(
            f"pretrained={name!r} for model {spec.name!r} is neither 'none', 'imagenet', "
            f"'default', an existing file, nor torchgeo weights. RGB torchgeo weights for its "
            f"backbone {spec.encoder!r}: {choices or 'none'}."
        )
    weights = enum[member]
    full = f"{enum.__name__}.{member}"
    wanted = weights.meta.get("model")
    if wanted != spec.encoder:
        raise WeightsError(
            f"torchgeo weights {full} are for a {wanted} but model {spec.name!r} has a "
            f"{spec.encoder} backbone ({spec.backbone}). Pick weights for {spec.encoder}: "
            f"{_rgb_choices(own_enum) or 'torchgeo has none'}."
        )
    in_chans = weights.meta.get("in_chans")
    if in_chans != 3:
        raise WeightsError(
            f"torchgeo weights {full} take {in_chans} input channels "
            f"({', '.join(weights.meta.get('bands', ())) or 'non-RGB bands'}), but model "
            f"{spec.name!r} gets LoveDA's 3-channel RGB. Use RGB weights: "
            f"{_rgb_choices(own_enum) or 'torchgeo has none for this backbone'}."
        )
    dataset = weights.meta.get("dataset")
    if dataset not in _EO_NORMALIZATION:
        raise WeightsError(
            f"torchgeo weights {full} (dataset {dataset!r}) have no LoveDA normalisation "
            "decided yet: read their `transforms` and add an entry to "
            "loveda_utils.models.registry._EO_NORMALIZATION."
        )
    return weights


def _rgb_choices(enum_name: str | None) -> str:
    if enum_name is None:
        return ""
    import torchgeo.models

    enum = getattr(torchgeo.models, enum_name)
    return ", ".join(f"{enum_name}.{w.name}" for w in enum if w.meta.get("in_chans") == 3)


def _load_torchgeo(model: SegmentationModel, weights: WeightsEnum) -> None:
    full = repr(weights)
    # Never weights.get_state_dict(): it would download when the file is absent.
    path = _find_url_file(weights.url, f"torchgeo weights {full}")
    state = _timm_resnet_to_torchvision(_read_state_dict(path))
    _load_backbone(model, state, f"{full} ({path})")
    norm = _EO_NORMALIZATION[weights.meta["dataset"]]
    model.set_normalization(norm.mean, norm.std, norm.text)
    model.pretrained = full


def _timm_resnet_to_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a timm ResNet state dict (torchgeo's format) to torchvision/smp ResNet keys.

    timm's plain ResNets (``resnet18/50/...``, not the deep-stem ``*d`` variants) use
    torchvision's names: ``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1-3}/bn{1-3}``,
    ``layer{i}.0.downsample.{0,1}``. Only the classifier ``fc`` has no counterpart in a
    segmentation encoder, so it is dropped; a deep stem would surface as missing keys.
    """
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


# --------------------------------------------------------------------------- files


_PATH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".pkl", ".tar")


def _looks_like_path(value: object) -> bool:
    if isinstance(value, os.PathLike):
        return True
    text = str(value)
    return (
        os.sep in text
        or "/" in text
        or text.startswith("~")
        or text.lower().endswith(_PATH_SUFFIXES)
        or os.path.exists(text)
    )


_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.pth``/``.ckpt``/``.safetensors`` file, unwrapping checkpoint dicts."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (pretrained={str(path)!r})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the same to the user
        raise WeightsError(
            f"cannot read weights file {path}: {type(exc).__name__}: {exc}. Expected a "
            "state dict saved with torch.save (loaded with weights_only=True) or a "
            ".safetensors file; re-download or re-export it."
        ) from exc
    for _ in range(3):  # e.g. Lightning {"state_dict": ...}, {"model": {...}}
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(
            f"weights file {path} holds {type(obj).__name__}, not a state dict "
            "(a mapping of parameter names to tensors)"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise WeightsError(
            f"weights file {path} holds no tensors (keys: {_some(list(obj))}); expected a "
            f"state dict, possibly under one of {_NESTED_KEYS}"
        )
    return tensors


def _is_tensor_dict(obj: Mapping) -> bool:
    return any(isinstance(v, Tensor) for v in obj.values())


#: Wrappers around a whole model: DDP, Lightning's ``self.model``, torch.compile.
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
#: Additionally stripped when the file is a backbone/encoder (MoCo keeps ``encoder_q.``).
_BACKBONE_PREFIXES = (*_WRAPPER_PREFIXES, "net.", "backbone.", "encoder.", "encoder_q.")
#: Classification/projection heads that a backbone file may carry and we never need.
_HEAD_NAMES = ("fc", "classifier", "head", "heads", "projector", "predictor")


def _is_optional(key: str) -> bool:
    # BatchNorm counters are absent from older files (torchvision's V1 ResNets).
    return key.endswith("num_batches_tracked")


class _Match(NamedTuple):
    matched: dict[str, Tensor]
    missing: list[str]
    unexpected: list[str]
    mismatched: dict[str, str]  # target key -> "file key: shapes"


def _match(
    state: dict[str, Tensor], target: dict[str, Tensor], prefixes: tuple[str, ...]
) -> _Match:
    """Map file keys onto ``target`` keys by stripping leading ``prefixes`` one at a time."""
    matched: dict[str, Tensor] = {}
    unexpected: list[str] = []
    mismatched: dict[str, str] = {}
    for key, value in state.items():
        k = key
        while k not in target:
            prefix = next((p for p in prefixes if k.startswith(p)), None)
            if prefix is None:
                break
            k = k[len(prefix) :]
        if k not in target:
            unexpected.append(key)
        elif value.shape != target[k].shape:
            mismatched[k] = (
                f"{key}: {tuple(value.shape)} in file, {tuple(target[k].shape)} in model"
            )
        elif k not in matched:
            matched[k] = value
    missing = [
        k for k in target if k not in matched and k not in mismatched and not _is_optional(k)
    ]
    return _Match(matched, missing, unexpected, mismatched)


def _some(keys: list[str], n: int = 8) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > n else shown or "-"


def _copy_into(module: nn.Module, tensors: dict[str, Tensor]) -> None:
    # state_dict() tensors share storage with the parameters/buffers: copy in place.
    target = module.state_dict()
    with torch.no_grad():
        for key, value in tensors.items():
            target[key].copy_(value)


def _load_backbone(
    model: SegmentationModel,
    state: dict[str, Tensor],
    source: str,
    extra_prefixes: tuple[str, ...] = (),
) -> None:
    """Load a backbone/encoder state dict into the model, or explain why it does not fit."""
    backbone = _backbone(model)
    target = backbone.state_dict()
    prefixes = (*_BACKBONE_PREFIXES, *extra_prefixes)
    found = _match(state, target, prefixes)
    unexpected = [
        k for k in found.unexpected if _strip(k, prefixes).split(".")[0] not in _HEAD_NAMES
    ]
    if found.missing or found.mismatched or not found.matched:
        raise WeightsError(
            f"weights {source} do not fit the {model.spec.encoder} backbone of model "
            f"{model.spec.name!r}: {len(found.matched)} of "
            f"{len([k for k in target if not _is_optional(k)])} tensors fit. "
            f"Missing: {_some(found.missing)}. "
            f"Shape mismatches: {_some(list(found.mismatched.values()))}. "
            f"Unexpected: {_some(found.unexpected)}."
        )
    if unexpected:
        warnings.warn(
            f"weights {source}: {len(unexpected)} tensors not used by the "
            f"{model.spec.encoder} backbone of {model.spec.name!r}: {_some(unexpected)}",
            UserWarning,
            stacklevel=3,
        )
    _copy_into(backbone, found.matched)


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    """``key`` without any leading run of ``prefixes``."""
    while (prefix := next((p for p in prefixes if key.startswith(p)), None)) is not None:
        key = key[len(prefix) :]
    return key


def _load_file(model: SegmentationModel, path: Path) -> None:
    """Load a full SegmentationModel state dict or a backbone state dict from ``path``."""
    path = path.resolve()
    state = _read_state_dict(path)
    target = model.state_dict()
    # The aux head is optional both ways: a training checkpoint may carry one the inference
    # model was built without, or lack one (trained with aux_loss=False).
    core = [
        k
        for k in target
        if k.startswith("net.") and not _is_optional(k) and not k.startswith("net.aux_classifier.")
    ]
    full = _match(state, target, _WRAPPER_PREFIXES)
    # A bare torchvision/smp network's state dict (no "net." level) counts as full too.
    raw = _match({f"net.{_strip(k, _WRAPPER_PREFIXES)}": v for k, v in state.items()}, target, ())
    full = max(full, raw, key=lambda m: sum(k in m.matched for k in core))
    # Full model = the file has decoder/head tensors of this model; otherwise it is a
    # backbone file (even one whose keys start with "encoder.", like smp's).
    head = [k for k in core if not k.startswith(("net.encoder.", "net.backbone."))]
    if any(k in full.matched or k in full.mismatched for k in head):
        missing = [k for k in full.missing if k in core]
        unexpected = [k for k in full.unexpected if ".aux_classifier." not in f".{k}"]
        if missing or full.mismatched or unexpected:
            raise WeightsError(
                f"weights file {path} is a full model state dict that does not fit model "
                f"{model.spec.name!r} (num_classes={model.num_classes}): missing "
                f"{_some(missing)}; shape mismatches {_some(list(full.mismatched.values()))}; "
                f"unexpected {_some(unexpected)}. Build the model it was saved from."
            )
        norm = {k: full.matched.pop(k) for k in ("mean", "std") if k in full.matched}
        _copy_into(model, full.matched)
        if len(norm) == 2:
            model.set_normalization(
                norm["mean"],
                norm["std"],
                f"from {path.name}: mean={_fmt(norm['mean'])}, "
                f"std={_fmt(norm['std'])} (0..255 units)",
            )
        else:
            default = _default_norm(model.spec)
            model.set_normalization(
                default.mean, default.std,
                f"{default.text} (not stored in {path.name}; the entry's default)",
            )  # fmt: skip
    else:
        _load_backbone(model, state, f"file {path}", extra_prefixes=("features.",))
        model.set_normalization(
            _IMAGENET.mean, _IMAGENET.std,
            f"{_IMAGENET.text} (backbone file {path.name}: ImageNet statistics assumed)",
        )  # fmt: skip
    model.pretrained = str(path)


def _default_norm(spec: ModelSpec) -> _Norm:
    if spec.default_pretrained == "imagenet":
        return _IMAGENET
    return _EO_NORMALIZATION[
        _resolve_torchgeo_weights(spec, spec.default_pretrained).meta["dataset"]
    ]


def _fmt(values: Tensor) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values.flatten().tolist()) + ")"
