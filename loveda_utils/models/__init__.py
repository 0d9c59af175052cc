"""The model zoo: the registry (:mod:`.registry`), the wrapper and builder (:mod:`.wrapper`),
pretrained weights (:mod:`.weights`, :mod:`.caches`, :mod:`.state_dict`).

The registry is plain data and imports without torch; ``build_model`` and
``SegmentationModel`` load :mod:`.wrapper` (torch, torchvision) on first use, so that
``import loveda_utils.models.registry`` stays cheap for the command line and the suite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import MODELS, TAGS, ModelSpec, available_models, get_spec, models_tagged

if TYPE_CHECKING:
    from .wrapper import SegmentationModel, build_model

__all__ = [
    "MODELS",
    "TAGS",
    "ModelSpec",
    "SegmentationModel",
    "available_models",
    "build_model",
    "get_spec",
    "models_tagged",
]

_FROM_WRAPPER = ("SegmentationModel", "build_model")


def __getattr__(name: str) -> Any:
    if name in _FROM_WRAPPER:
        from . import wrapper

        return getattr(wrapper, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
