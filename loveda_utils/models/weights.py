"""Pretrained weights of registry models: where they are found, how they load, how they normalise.

Weights are never downloaded here. ``pretrained`` (of
:func:`~loveda_utils.models.wrapper.build_model`) may be:

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
  (only the classifier ``fc`` is dropped). Weights of a whole network (torchgeo's
  ``Unet_Weights.OAM_RGB_RESNET50_TCD``) initialise the encoder and the decoder of the entry
  of that architecture and encoder (:mod:`loveda_utils.models.whole_network`).
* ``"default"``: the registry entry's :attr:`~loveda_utils.models.registry.ModelSpec.default_pretrained`.
* a path to a state-dict file (:mod:`loveda_utils.models.state_dict` reads it, safely):
  either a full :class:`~loveda_utils.models.wrapper.SegmentationModel` state dict (e.g. a
  Lightning checkpoint of our own training; its ``mean``/``std`` come along), or a
  backbone/encoder state dict. Common prefixes (``module.``, ``model.``, ``net.``,
  ``backbone.``, ``encoder.``, ...) are stripped and every backbone tensor must be found with
  the right shape, otherwise :class:`~loveda_utils.errors.WeightsError` lists what is
  missing and unexpected.

A missing file offline raises :class:`~loveda_utils.errors.WeightsError` at once, naming the
file, the URL (or Hub repository) to fetch it from, the folder to put it in and the
``python -m loveda_utils fetch-weights`` command that does it; :func:`weight_files` says
which files a choice reads, for that command and for the loaders here.

Normalisation: :mod:`loveda_utils.models.normalization` (the one place, with the reasons per
weights).

``model.normalization`` holds the short form of the choice for the results record.

Extending: a keyword choice is one entry of :data:`KEYWORD_SOURCES` (and of
:data:`KEYWORD_FILES`, the files it reads); ImageNet weights of a new registry family are one
entry of :data:`IMAGENET_SOURCES` (and of :data:`IMAGENET_FILES`); new EO weights need their
dataset's normalisation in :data:`~loveda_utils.models.normalization.EO_NORMALIZATION` (and their enum in :data:`_TORCHGEO_ENUMS`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..errors import WeightsError
from .caches import WeightFile, hf_weight_file, require_weight_file, torch_hub_weight_file
from .foundation import backbone_state_dict
from .normalization import EO_NORMALIZATION, IMAGENET_NORMALIZATION, Normalization
from .registry import get_spec
from .state_dict import (
    BACKBONE_PREFIXES,
    WRAPPER_PREFIXES,
    copy_into,
    is_optional,
    looks_like_path,
    match_keys,
    read_state_dict,
    some_keys,
    strip_prefixes,
)
from .whole_network import load_whole_network, whole_network_arch

if TYPE_CHECKING:
    from torchvision.models._api import WeightsEnum

    from .registry import ModelSpec
    from .wrapper import SegmentationModel

__all__ = [
    "IMAGENET_FILES",
    "IMAGENET_SOURCES",
    "KEYWORD_SOURCES",
    "load_pretrained",
    "weight_files",
]


def _default_norm(spec: ModelSpec) -> Normalization:
    """The normalisation of the entry's own weights (what a file without mean/std gets)."""
    if spec.default_pretrained == "imagenet":
        return IMAGENET_NORMALIZATION
    weights = _resolve_torchgeo_weights(spec, spec.default_pretrained)
    return EO_NORMALIZATION[weights.meta["dataset"]]


# --------------------------------------------------------------------------- the choice


def load_pretrained(model: SegmentationModel, pretrained: str | os.PathLike[str] | None) -> None:
    """Load the ``pretrained`` choice into ``model``; set its ``pretrained`` and normalisation.

    The choice is, in this order: ``"default"`` (replaced by the entry's own weights), a
    keyword of :data:`KEYWORD_SOURCES`, a path to a file, else a torchgeo weights name.
    """
    choice = _resolve_choice(model.spec, pretrained)
    if isinstance(choice, Path):
        _load_file(model, choice)
    elif choice in KEYWORD_SOURCES:
        KEYWORD_SOURCES[choice](model)
    else:
        _load_torchgeo(model, _resolve_torchgeo_weights(model.spec, choice))


def _resolve_choice(spec: ModelSpec, pretrained: str | os.PathLike[str] | None) -> str | Path:
    """A keyword of :data:`KEYWORD_SOURCES`, a file path, or else a torchgeo weights name."""
    choice: str | os.PathLike[str] = "none" if pretrained is None else pretrained
    if isinstance(choice, str) and choice.strip().lower() == "default":
        choice = spec.default_pretrained
    keyword = choice.strip().lower() if isinstance(choice, str) else None
    if keyword is not None and keyword in KEYWORD_SOURCES:
        return keyword
    if looks_like_path(choice):
        return Path(choice).expanduser()
    return str(choice)


def _load_none(model: SegmentationModel) -> None:
    model.set_normalization(*IMAGENET_NORMALIZATION)
    model.pretrained = "none"


def _load_imagenet(model: SegmentationModel) -> None:
    source = IMAGENET_SOURCES.get(model.spec.family)
    if source is None:
        raise _no_imagenet(model.spec)
    source(model)
    model.set_normalization(*IMAGENET_NORMALIZATION)
    model.pretrained = "imagenet"


# --------------------------------------------------------------------------- ImageNet weights


def _imagenet_torchvision(model: SegmentationModel) -> None:
    file = _imagenet_torchvision_file(model.spec)
    path = require_weight_file(file)
    # torchvision MobileNetV3 keeps its layers under "features."; the segmentation backbone
    # is that Sequential itself.
    _load_backbone(
        model, read_state_dict(path), f"{file.url} ({path})", extra_prefixes=("features.",)
    )


def _imagenet_smp(model: SegmentationModel) -> None:
    file = _imagenet_smp_file(model.spec)
    path = require_weight_file(file)
    _load_backbone(model, read_state_dict(path), f"{file.url} ({path})")


#: Loaders of the keyword choices of ``pretrained`` (lower case).
KEYWORD_SOURCES: dict[str, Callable[[SegmentationModel], None]] = {
    "none": _load_none,
    "": _load_none,
    "imagenet": _load_imagenet,
}
#: ImageNet backbone weights per registry family: load them into ``model.backbone_module()``.
IMAGENET_SOURCES: dict[str, Callable[[SegmentationModel], None]] = {
    "torchvision": _imagenet_torchvision,
    "smp": _imagenet_smp,
}


# --------------------------------------------------------------------------- which files
# What each choice reads from the caches: one place, used by the loaders above and by the
# fetch-weights command (loveda_utils/models/fetch.py), so the two cannot disagree.


def weight_files(
    model: str | ModelSpec, pretrained: str | os.PathLike[str] | None = "default"
) -> list[WeightFile]:
    """The files ``build_model(model, pretrained=pretrained)`` reads from the caches.

    Empty for ``"none"`` and for a state-dict path (nothing to fetch). Unknown models raise
    ``UnknownModelError``; weights that do not fit the model raise ``WeightsError``.
    """
    spec = get_spec(model) if isinstance(model, str) else model
    choice = _resolve_choice(spec, pretrained)
    if isinstance(choice, Path):
        return []
    if choice in KEYWORD_FILES:
        return KEYWORD_FILES[choice](spec)
    return [_torchgeo_file(spec, _resolve_torchgeo_weights(spec, choice))]


def _imagenet_files(spec: ModelSpec) -> list[WeightFile]:
    file = IMAGENET_FILES.get(spec.family)
    if file is None:
        raise _no_imagenet(spec)
    return [file(spec)]


def _no_imagenet(spec: ModelSpec) -> WeightsError:
    return WeightsError(
        f"pretrained='imagenet' for model {spec.name!r}: its family {spec.family!r} has no "
        "ImageNet weights. Use pretrained='default' or 'none'."
    )


def _imagenet_torchvision_file(spec: ModelSpec) -> WeightFile:
    import torchvision

    weights = torchvision.models.get_model_weights(spec.encoder).IMAGENET1K_V1
    return torch_hub_weight_file(spec.name, "imagenet", weights.url)


def _imagenet_smp_file(spec: ModelSpec) -> WeightFile:
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders[spec.encoder]["pretrained_settings"].get("imagenet")
    if settings is None:
        raise WeightsError(
            f"pretrained='imagenet' for model {spec.name!r}: smp encoder {spec.encoder!r} has "
            "no 'imagenet' weights. Use pretrained='none' or a state-dict path."
        )
    # smp 0.6 pins a commit per encoder and reads model.safetensors from it (its config.json
    # only describes the encoder, which the registry builds itself).
    repo_id, revision = settings["repo_id"], settings["revision"]
    return hf_weight_file(spec.name, "imagenet", repo_id, "model.safetensors", revision)


def _torchgeo_file(spec: ModelSpec, weights: WeightsEnum) -> WeightFile:
    # torchgeo's get_state_dict() caches by URL in the torch hub folder, so its files go there.
    return torch_hub_weight_file(spec.name, repr(weights), weights.url)


#: The files each keyword of :data:`KEYWORD_SOURCES` reads (the same keys).
KEYWORD_FILES: dict[str, Callable[[ModelSpec], list[WeightFile]]] = {
    "none": lambda spec: [],
    "": lambda spec: [],
    "imagenet": _imagenet_files,
}
#: The ImageNet file of each family of :data:`IMAGENET_SOURCES` (the same keys).
IMAGENET_FILES: dict[str, Callable[[ModelSpec], WeightFile]] = {
    "torchvision": _imagenet_torchvision_file,
    "smp": _imagenet_smp_file,
}


# --------------------------------------------------------------------------- torchgeo weights


#: torchgeo weights enum per backbone network, for short names like "SENTINEL2_RGB_MOCO".
_TORCHGEO_ENUMS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "swin_v2_t": "Swin_V2_T_Weights",
    "swin_v2_b": "Swin_V2_B_Weights",
    "vit_large_patch16": "ScaleMAELarge16_Weights",
    "dofa_base_patch16_224": "DOFABase16_Weights",
}


def _takes_rgb(weights: WeightsEnum) -> bool:
    """RGB weights, or spectrally flexible ones (DOFA: no ``in_chans``, any bands)."""
    meta = weights.meta
    return meta.get("in_chans") == 3 or ("in_chans" not in meta and "bands" not in meta)


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
    enum: Any = getattr(torchgeo.models, enum_name, None)
    is_weights_enum = isinstance(enum, type) and issubclass(enum, WeightsEnum)
    if not is_weights_enum or member not in enum.__members__:
        raise WeightsError(
            f"pretrained={name!r} for model {spec.name!r} is neither 'none', 'imagenet', "
            f"'default', an existing file, nor torchgeo weights. RGB torchgeo weights for its "
            f"backbone {spec.encoder!r}: {_rgb_choices(own_enum) or 'none'}."
        )
    weights = enum[member]
    full = f"{enum.__name__}.{member}"
    # Whole-network weights (a U-Net) fit the entry of that architecture and encoder.
    arch = whole_network_arch(weights)
    wanted = weights.meta["encoder"] if arch else weights.meta.get("model")
    if wanted != spec.encoder or arch not in (None, spec.arch):
        what = f"{weights.meta['model']} with a {wanted} encoder" if arch else wanted
        raise WeightsError(
            f"torchgeo weights {full} are for a {what} but model {spec.name!r} has a "
            f"{spec.encoder} backbone ({spec.backbone}). Pick weights for {spec.encoder}: "
            f"{_rgb_choices(own_enum) or 'torchgeo has none'}."
        )
    in_chans = weights.meta.get("in_chans")
    if not _takes_rgb(weights):
        raise WeightsError(
            f"torchgeo weights {full} take {in_chans} input channels "
            f"({', '.join(weights.meta.get('bands', ())) or 'non-RGB bands'}), but model "
            f"{spec.name!r} gets LoveDA's 3-channel RGB. Use RGB weights: "
            f"{_rgb_choices(own_enum) or 'torchgeo has none for this backbone'}."
        )
    dataset = weights.meta.get("dataset")
    if dataset not in EO_NORMALIZATION:
        raise WeightsError(
            f"torchgeo weights {full} (dataset {dataset!r}) have no LoveDA normalisation "
            "decided yet: read their `transforms` and add an entry to "
            "loveda_utils.models.normalization.EO_NORMALIZATION."
        )
    return weights


def _rgb_choices(enum_name: str | None) -> str:
    if enum_name is None:
        return ""
    import torchgeo.models

    enum = getattr(torchgeo.models, enum_name)
    return ", ".join(f"{enum_name}.{w.name}" for w in enum if _takes_rgb(w))


def _load_torchgeo(model: SegmentationModel, weights: WeightsEnum) -> None:
    full = repr(weights)
    # Never weights.get_state_dict(): it would download when the file is absent.
    path = require_weight_file(_torchgeo_file(model.spec, weights))
    state = read_state_dict(path)
    if whole_network_arch(weights):  # encoder and decoder (whole_network.py)
        load_whole_network(model, state, f"{full} ({path})")
        model.set_normalization(*EO_NORMALIZATION[weights.meta["dataset"]])
        model.pretrained = full
        return
    if model.spec.family == "torchgeo":  # the transformer's file minus what it never uses
        state = backbone_state_dict(model.backbone_module(), state)
    else:
        # torchgeo's ResNets are timm ResNets with torchvision's key names (conv1, bn1,
        # layer{1-4}...); only the classifier "fc" has no counterpart in a segmentation encoder.
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _load_backbone(model, state, f"{full} ({path})")
    model.set_normalization(*EO_NORMALIZATION[weights.meta["dataset"]])
    model.pretrained = full


# --------------------------------------------------------------------------- loading files


#: Classification/projection heads that a backbone file may carry and we never need.
_HEAD_NAMES = ("fc", "classifier", "head", "heads", "projector", "predictor")


def _load_backbone(
    model: SegmentationModel,
    state: dict[str, Tensor],
    source: str,
    extra_prefixes: tuple[str, ...] = (),
) -> None:
    """Load a backbone/encoder state dict into the model, or explain why it does not fit."""
    backbone = model.backbone_module()
    target = backbone.state_dict()
    prefixes = (*BACKBONE_PREFIXES, *extra_prefixes)
    found = match_keys(state, target, prefixes)
    if found.missing or found.mismatched or not found.matched:
        raise WeightsError(
            f"weights {source} do not fit the {model.spec.encoder} backbone of model "
            f"{model.spec.name!r}: {len(found.matched)} of "
            f"{len([k for k in target if not is_optional(k)])} tensors fit. "
            f"Missing: {some_keys(found.missing)}. "
            f"Shape mismatches: {some_keys(list(found.mismatched.values()))}. "
            f"Unexpected: {some_keys(found.unexpected)}."
        )
    unused = [
        k for k in found.unexpected if strip_prefixes(k, prefixes).split(".")[0] not in _HEAD_NAMES
    ]
    if unused:
        warnings.warn(
            f"weights {source}: {len(unused)} tensors not used by the "
            f"{model.spec.encoder} backbone of {model.spec.name!r}: {some_keys(unused)}",
            UserWarning,
            stacklevel=4,
        )
    copy_into(backbone, found.matched)


def _load_file(model: SegmentationModel, path: Path) -> None:
    """Load a full SegmentationModel state dict or a backbone state dict from ``path``."""
    path = path.resolve()
    state = read_state_dict(path)
    target = model.state_dict()
    # The aux head is optional both ways: a training checkpoint may carry one the inference
    # model was built without, or lack one (trained with aux_loss=False).
    core = [
        k
        for k in target
        if k.startswith("net.") and not is_optional(k) and not k.startswith("net.aux_classifier.")
    ]
    full = match_keys(state, target, WRAPPER_PREFIXES)
    # A bare torchvision/smp network's state dict (no "net." level) counts as full too.
    bare = {f"net.{strip_prefixes(k, WRAPPER_PREFIXES)}": v for k, v in state.items()}
    full = max(full, match_keys(bare, target, ()), key=lambda m: sum(k in m.matched for k in core))
    # Full model = the file has decoder/head tensors of this model; otherwise it is a
    # backbone file (even one whose keys start with "encoder.", like smp's).
    head = [k for k in core if not k.startswith(("net.encoder.", "net.backbone."))]
    if not any(k in full.matched or k in full.mismatched for k in head):
        _load_backbone_file(model, state, path)
        return
    missing = [k for k in full.missing if k in core]
    unexpected = [k for k in full.unexpected if ".aux_classifier." not in f".{k}"]
    if missing or full.mismatched or unexpected:
        raise WeightsError(
            f"weights file {path} is a full model state dict that does not fit model "
            f"{model.spec.name!r} (num_classes={model.num_classes}): missing "
            f"{some_keys(missing)}; shape mismatches {some_keys(list(full.mismatched.values()))}; "
            f"unexpected {some_keys(unexpected)}. Build the model it was saved from."
        )
    norm = {k: full.matched.pop(k) for k in ("mean", "std") if k in full.matched}
    copy_into(model, full.matched)
    if len(norm) == 2:
        model.set_normalization(
            norm["mean"],
            norm["std"],
            f"from {path.name}: mean={_fmt(norm['mean'])}, std={_fmt(norm['std'])} (0..255 units)",
        )
    else:
        default = _default_norm(model.spec)
        model.set_normalization(
            default.mean,
            default.std,
            f"{default.text} (not stored in {path.name}; the entry's default)",
        )
    model.pretrained = str(path)


def _load_backbone_file(model: SegmentationModel, state: dict[str, Tensor], path: Path) -> None:
    """A backbone state dict given by path, with the normalisation it is assumed to need."""
    if model.spec.family == "torchgeo":
        # In the layout of the entry's torchgeo weights, so their normalisation applies.
        state = backbone_state_dict(model.backbone_module(), state)
        _load_backbone(model, state, f"file {path}")
        mean, std, text = _default_norm(model.spec)
        assumed = f"the normalisation of {model.spec.default_pretrained} assumed"
    else:
        _load_backbone(model, state, f"file {path}", extra_prefixes=("features.",))
        mean, std, text = IMAGENET_NORMALIZATION
        assumed = "ImageNet statistics assumed"
    model.set_normalization(mean, std, f"{text} (backbone file {path.name}: {assumed})")
    model.pretrained = str(path)


def _fmt(values: Tensor) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values.flatten().tolist()) + ")"
