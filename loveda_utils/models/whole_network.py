"""torchgeo weights of a whole segmentation network, as the initialisation of a registry model.

Most torchgeo weights are backbones (``weights.meta["model"]`` names the backbone network, e.g.
``"resnet50"``), loaded into a registry model's encoder by
:mod:`loveda_utils.models.weights`. A few are whole smp networks trained for another
segmentation task: ``Unet_Weights.OAM_RGB_RESNET50_TCD`` is an smp ``Unet`` with a ResNet-50
encoder trained on OAM-TCD (tree cover, 10 cm aerial RGB, two classes), built by torchgeo's
``unet`` model builder (``weights.meta``: ``"model": "U-Net"``, ``"encoder": "resnet50"``,
``"num_classes": 2``). Such a file initialises the registry model of the same architecture and
encoder whole, encoder and decoder, a different kind of transfer than a backbone; only the
class-specific segmentation head, whose shape depends on the number of classes, starts anew.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..errors import WeightsError
from .state_dict import (
    WRAPPER_PREFIXES,
    copy_into,
    is_optional,
    match_keys,
    some_keys,
    strip_prefixes,
)

if TYPE_CHECKING:
    from .wrapper import SegmentationModel

__all__ = ["CLASS_HEAD", "WHOLE_NETWORK_ARCHS", "load_whole_network", "whole_network_arch"]

#: torchgeo's ``meta["model"]`` of whole-network weights -> the smp architecture they are.
WHOLE_NETWORK_ARCHS: dict[str, str] = {"U-Net": "Unet"}
#: The smp network's class-specific head: shaped by the number of classes, never transferred.
CLASS_HEAD = "segmentation_head."


def whole_network_arch(weights: Any) -> str | None:
    """The smp architecture of whole-network torchgeo ``weights`` (their ``meta`` names an
    ``encoder`` beside the network), else None (backbone weights)."""
    meta = weights.meta
    if "encoder" not in meta:
        return None
    return WHOLE_NETWORK_ARCHS.get(meta.get("model", ""))


def load_whole_network(model: SegmentationModel, state: dict[str, Tensor], source: str) -> None:
    """Load every tensor of ``model.net`` but its class head from ``state``, or explain.

    Raises:
        WeightsError: naming ``source`` and the model, when a tensor of the network (the head
            aside) is missing or shaped otherwise, or the file holds tensors it does not have.
    """
    target = {k: v for k, v in model.net.state_dict().items() if not k.startswith(CLASS_HEAD)}
    file_state = {
        k: v for k, v in state.items()
        if not strip_prefixes(k, WRAPPER_PREFIXES).startswith(CLASS_HEAD)
    }  # fmt: skip
    found = match_keys(file_state, target, WRAPPER_PREFIXES)
    if found.missing or found.mismatched or found.unexpected:
        raise WeightsError(
            f"weights {source} do not fit the whole {model.spec.arch} with a "
            f"{model.spec.encoder} encoder of model {model.spec.name!r}: {len(found.matched)} of "
            f"{len([k for k in target if not is_optional(k)])} tensors fit (the class head "
            f"aside). Missing: {some_keys(found.missing)}. Shape mismatches: "
            f"{some_keys(list(found.mismatched.values()))}. Unexpected: "
            f"{some_keys(found.unexpected)}."
        )
    copy_into(model.net, found.matched)
