"""Building registry models: :func:`build_model` and the :class:`SegmentationModel` wrapper.

Every model is wrapped in :class:`SegmentationModel`, which takes LoveDA batches as they
come (``uint8`` RGB ``[B, 3, H, W]``), normalises them on the device and returns logits at
the input resolution. How a family's network is built, where its backbone is and how its
logits are computed is one :class:`NetFamily` in :data:`NET_FAMILIES`:

* ``torchvision``: always built with ``weights=None, weights_backbone=None`` so torchvision
  never downloads; FCN/DeepLabV3 keep their auxiliary FCN head for training
  (``forward_train``), and the inference path (``forward``) never runs it.
* ``smp``: built with ``encoder_weights=None``.
* ``torchgeo``: :class:`~loveda_utils.models.foundation.FoundationUPerNet`, a torchgeo
  transformer backbone built with ``weights=None`` under smp's UPerNet decoder.

Pretrained weights are loaded afterwards by :func:`loveda_utils.models.weights.load_pretrained`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.classes import NUM_CLASSES
from ..errors import ConfigError
from .normalization import IMAGENET_NORMALIZATION
from .registry import ModelSpec, get_spec
from .weights import load_pretrained

__all__ = ["NET_FAMILIES", "NetFamily", "SegmentationModel", "build_model"]


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class NetFamily:
    """How the networks of one registry family are built and run.

    Attributes:
        build: ``(spec, num_classes, aux_loss) -> network``, never downloading.
        backbone: The module of a network that pretrained backbone weights load into.
        logits: ``(network, normalised images, with_aux) -> (logits, aux logits or None)``,
            both at the resolution of the images given.
    """

    build: Callable[[ModelSpec, int, bool], nn.Module]
    backbone: Callable[[nn.Module], nn.Module]
    logits: Callable[[nn.Module, Tensor, bool], tuple[Tensor, Tensor | None]]


def _build_torchvision(spec: ModelSpec, num_classes: int, aux_loss: bool) -> nn.Module:
    from torchvision.models import segmentation

    builder = getattr(segmentation, spec.arch)
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None}
    if spec.has_aux:  # LR-ASPP rejects aux_loss at all
        kwargs["aux_loss"] = aux_loss
    return builder(num_classes=num_classes, **kwargs)


def _torchvision_logits(net: Any, x: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None]:
    # The backbone's IntermediateLayerGetter returns the aux features for free; only the aux
    # *head* costs, so it runs only when asked for.
    features = net.backbone(x)
    size = x.shape[-2:]
    aux = None
    if hasattr(net, "aux_classifier"):  # FCN / DeepLabV3 (maybe built without aux)
        logits = net.classifier(features["out"])
        if with_aux and net.aux_classifier is not None:
            aux = net.aux_classifier(features["aux"])
            aux = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
    else:  # the LR-ASPP head takes the feature dict
        logits = net.classifier(features)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False), aux


def _build_smp(spec: ModelSpec, num_classes: int, aux_loss: bool) -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.create_model(
        spec.arch,
        encoder_name=spec.encoder,
        encoder_weights=None,
        classes=num_classes,
        **dict(spec.arch_kwargs),
    )


def _build_torchgeo(spec: ModelSpec, num_classes: int, aux_loss: bool) -> nn.Module:
    from .foundation import build_foundation_net

    return build_foundation_net(spec.encoder, num_classes, **dict(spec.arch_kwargs))


#: One entry per ``ModelSpec.family``; a new family adds its builder here.
NET_FAMILIES: dict[str, NetFamily] = {
    "torchvision": NetFamily(_build_torchvision, attrgetter("backbone"), _torchvision_logits),
    "smp": NetFamily(_build_smp, attrgetter("encoder"), lambda net, x, _: (net(x), None)),
    "torchgeo": NetFamily(_build_torchgeo, attrgetter("encoder"), lambda net, x, _: (net(x), None)),
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

    def __init__(self, spec: ModelSpec, net: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.spec = spec
        self.net = net
        self.num_classes = num_classes
        # Random initialisation until weights.load_pretrained says otherwise.
        norm = IMAGENET_NORMALIZATION
        self.pretrained = "none"
        self.normalization = norm.text
        self.aux_loss = getattr(net, "aux_classifier", None) is not None
        self._family = NET_FAMILIES[spec.family]
        # Persistent: a saved state dict carries the normalisation it was trained with.
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1))
        self._stride = self._input_divisor(net)

    @staticmethod
    def _input_divisor(net: Any) -> int:
        if getattr(net, "requires_divisible_input_shape", False):  # smp
            return int(net.encoder.output_stride)
        return 1

    def backbone_module(self) -> nn.Module:
        """The module pretrained backbone weights load into (torchvision backbone, smp encoder)."""
        return self._family.backbone(self.net)

    def set_normalization(self, mean: Tensor | tuple[float, ...], std: Tensor | tuple[float, ...],
                          text: str) -> None:  # fmt: skip
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
        return self._logits_of_normalized(self.normalize(images), with_aux)

    def _logits_of_normalized(self, x: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None]:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self._stride, -width % self._stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        logits, aux = self._family.logits(self.net, x, with_aux)
        if pad_h or pad_w:
            logits = logits[..., :height, :width]
            aux = aux[..., :height, :width] if aux is not None else None
        return logits, aux

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, num_classes, H, W]`` for 0..255 RGB ``images`` (no auxiliary head)."""
        return self._logits(images, with_aux=False)[0]

    def forward_normalized(self, x: Tensor) -> Tensor:
        """``forward`` of images already normalised by :meth:`normalize`: what MMSeg's
        ``benchmark.py`` times (its data preprocessor normalises before the clock starts)."""
        return self._logits_of_normalized(x, with_aux=False)[0]

    def forward_train(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(logits, aux_logits or None)``, both at the input resolution."""
        return self._logits(images, with_aux=True)

    def param_groups(
        self, base_lr: float, decay: float = 1.0, weight_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups, with layer-wise lr ``decay`` where the net has layers.

        The ``torchgeo`` family's transformers define their layers
        (:meth:`loveda_utils.models.foundation.FoundationUPerNet.param_groups`: MMSeg's
        layer-decay rule, no weight decay on biases, norms and tokens); other networks give
        one group of every trainable parameter and accept only ``decay=1``.
        """
        own = getattr(self.net, "param_groups", None)
        if callable(own):
            return own(base_lr, decay, weight_decay)
        if decay != 1:
            raise ConfigError(
                f"layer-wise lr decay={decay!r} for model {self.spec.name!r}: its "
                f"{self.spec.family} network has no layers to decay over; use decay=1 (only "
                "the torchgeo-family transformers support it)"
            )
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"name": "all", "params": params, "lr": base_lr, "lr_scale": 1.0,
                 "weight_decay": weight_decay}]  # fmt: skip

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
        name: A registry key (see :func:`~loveda_utils.models.registry.available_models`).
        num_classes: Output classes (7 for LoveDA).
        pretrained: ``"none"``, ``"imagenet"``, ``"default"`` (the entry's own weights), a
            torchgeo weights name (``"ResNet50_Weights.SENTINEL2_RGB_MOCO"`` or
            ``"SENTINEL2_RGB_MOCO"``), or a path to a state-dict file
            (:mod:`loveda_utils.models.weights`).
        aux_loss: Keep the auxiliary head (torchvision FCN/DeepLabV3 only). ``None``: yes
            for those models, no for the others.

    Returns:
        The model in training mode, on the CPU.

    Raises:
        UnknownModelError: ``name`` is not in the registry.
        WeightsError: the weights are missing offline, unreadable, unsafe, or do not fit.
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
    net = NET_FAMILIES[spec.family].build(spec, num_classes, bool(aux_loss))
    model = SegmentationModel(spec, net, num_classes)
    load_pretrained(model, pretrained)
    return model
