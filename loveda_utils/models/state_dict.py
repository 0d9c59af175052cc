"""State-dict files: read safely, unwrap checkpoints, match their keys onto a module.

A weights file given by a user is never unpickled unsafely. ``.safetensors`` files are read
by safetensors (no pickle at all); every other file by ``torch.load(weights_only=True)``,
which only rebuilds tensors and plain containers. A file that needs more (a pickle of
arbitrary Python objects, whose unpickling could run any code) is refused with a
:class:`~loveda_utils.errors.WeightsError` naming it; it is never retried unsafely.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..errors import WeightsError

#: Suffixes that mark a ``pretrained`` value as a file even when it does not exist (yet).
_PATH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".pkl", ".tar")
#: Where checkpoints nest their state dict, e.g. Lightning ``{"state_dict": ...}``.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
#: Wrappers around a whole model: DDP, Lightning's ``self.model``, torch.compile.
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
#: Additionally stripped when the file is a backbone/encoder (MoCo keeps ``encoder_q.``).
BACKBONE_PREFIXES = (*WRAPPER_PREFIXES, "net.", "backbone.", "encoder.", "encoder_q.")
#: What torch's weights-only unpickler says when a file refers to a Python object.
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")


def looks_like_path(value: object) -> bool:
    """Whether a ``pretrained`` value names a file rather than a keyword or weights name."""
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


def _load_safely(path: Path) -> Any:
    """The object in ``path``, read without running code from the file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests loading unsafely; ours never does (from None: not
        # chained either). Name what the file asked for when torch says it.
        found = _UNSAFE_GLOBAL.search(str(exc))
        what = (
            f"it refers to the Python object {found.group(1)!r}"
            if found
            else "it is not a plain pickle of tensors (or is corrupt)"
        )
        raise WeightsError(
            f"weights file {path} cannot be loaded safely: {what}, and unpickling it could run "
            "arbitrary code. Only tensors in plain containers (what torch.save(model.state_dict(), "
            "path) writes) and .safetensors files are read. Use a state-dict or .safetensors copy "
            "of these weights from a source you trust."
        ) from None


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.pth``/``.ckpt``/``.safetensors`` file, unwrapping checkpoint dicts."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (pretrained={str(path)!r})")
    try:
        obj = _load_safely(path)
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means the same to the user
        raise WeightsError(
            f"cannot read weights file {path}: {type(exc).__name__}: {exc}. Expected a "
            "state dict saved with torch.save or a .safetensors file; re-download or re-export it."
        ) from exc
    for _ in range(3):  # e.g. Lightning {"state_dict": ...}, {"model": {...}}
        if isinstance(obj, Mapping) and not _has_tensors(obj):
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
            f"weights file {path} holds no tensors (keys: {some_keys(list(obj))}); expected a "
            f"state dict, possibly under one of {_NESTED_KEYS}"
        )
    return tensors


def _has_tensors(obj: Mapping) -> bool:
    return any(isinstance(v, Tensor) for v in obj.values())


def is_optional(key: str) -> bool:
    """Keys a file may lack: BatchNorm counters are absent from older files (torchvision V1)."""
    return key.endswith("num_batches_tracked")


class KeyMatch(NamedTuple):
    """File tensors mapped onto a module's keys, and what did not map."""

    matched: dict[str, Tensor]
    missing: list[str]
    unexpected: list[str]
    mismatched: dict[str, str]  # target key -> "file key: shapes"


def match_keys(
    state: dict[str, Tensor], target: dict[str, Tensor], prefixes: tuple[str, ...]
) -> KeyMatch:
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
    missing = [k for k in target if k not in matched and k not in mismatched and not is_optional(k)]
    return KeyMatch(matched, missing, unexpected, mismatched)


def strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    """``key`` without any leading run of ``prefixes``."""
    while (prefix := next((p for p in prefixes if key.startswith(p)), None)) is not None:
        key = key[len(prefix) :]
    return key


def some_keys(keys: list[str], n: int = 8) -> str:
    """The first ``n`` keys for an error message, and how many there are."""
    shown = ", ".join(keys[:n])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > n else shown or "-"


def copy_into(module: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Copy matched tensors into ``module`` in place (its state_dict() shares their storage)."""
    target = module.state_dict()
    with torch.no_grad():
        for key, value in tensors.items():
            target[key].copy_(value)
