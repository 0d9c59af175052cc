"""Reading checkpoints safely: every checkpoint a user can hand us goes through :func:`read_checkpoint`.

``torch.load(weights_only=True)`` only rebuilds tensors and plain values (dicts, lists, numbers,
strings), so unpickling a file cannot run code from it. Our checkpoints need nothing more: the
task's and the data module's hyperparameters are plain values, and Lightning's own entries
(loops, callbacks, optimiser and scheduler states) are too. A file that needs more (any other
Python object) is refused, never loaded with the unrestricted unpickler; a damaged file (cut
short, random bytes) gets a :class:`~loveda_utils.errors.CheckpointError` that names it and says
what to do instead of torch's raw unpickling error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ..errors import CheckpointError
from .task import SegmentationTask

#: What to do about a checkpoint passed in to be evaluated.
GIVEN_REMEDY = "pass a complete .ckpt written by training (python -m loveda_utils train, or 03_benchmark)"
#: What to do about the ``last.ckpt`` an interrupted run left in its folder.
RESUME_REMEDY = (
    "move it aside to restart the run from step 0, or start a fresh run folder "
    "(run-suite --force, another run_name, or another train --run-dir)"
)

#: The run folder's checkpoint folder.
CHECKPOINTS_DIR = "checkpoints"

_UNSAFE = re.compile(r"Unsupported global: GLOBAL (\S+)")


def read_checkpoint(
    path: str | Path, *, remedy: str = GIVEN_REMEDY, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """The contents of the checkpoint at ``path``, loaded with ``weights_only=True``.

    Raises:
        CheckpointError: naming the file when it is missing, damaged, holds objects beyond
            tensors and plain values, or is not a dict; ``remedy`` says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint={str(path)!r} does not exist; {remedy}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        # torch's messages suggest weights_only=False: never pass that advice on (from None).
        unsafe = _UNSAFE.search(str(exc))
        if unsafe:
            raise CheckpointError(
                f"checkpoint {path} is refused: it holds a Python object ({unsafe.group(1)}) beyond "
                f"tensors and plain values, and unpickling it could run code from the file; {remedy}"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is unreadable or corrupt (not a complete checkpoint: "
            f"{type(exc).__name__}); {remedy}"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a checkpoint dict; {remedy}")
    return data


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A trained task restored from a checkpoint, with what the checkpoint says of its training.

    ``crop_size`` and ``batch_size`` come from the data module's saved hyperparameters
    (``None`` when the checkpoint has none).
    """

    path: Path
    global_step: int
    crop_size: int | None
    batch_size: int | None
    task: SegmentationTask = field(repr=False)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Restore a :class:`SegmentationTask` from a Lightning checkpoint, without fetching the
    pretrained weights again.

    Raises:
        CheckpointError: naming the file when it is missing, unreadable, not one of ours, or
            does not fit its model.
    """
    path = Path(path)
    data = read_checkpoint(path, map_location=map_location)
    if "state_dict" not in data or "hyper_parameters" not in data:
        raise CheckpointError(
            f"checkpoint {path} is not a SegmentationTask checkpoint (no state_dict/hyper_parameters); "
            f"{GIVEN_REMEDY}"
        )
    hparams = dict(data["hyper_parameters"])
    trained_from = hparams.get("pretrained", "none")
    hparams["pretrained"] = "none"  # the checkpoint holds the trained weights already
    try:
        task = SegmentationTask(**hparams)
        task.load_state_dict(data["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit model {hparams.get('model')!r}: {exc}") from exc
    # Report what the weights were trained from, and the normalisation restored with them.
    model = task.model
    model.pretrained = str(trained_from)
    mean, std = (", ".join(f"{v:.1f}" for v in t.flatten().tolist()) for t in (model.mean, model.std))
    model.normalization = f"mean=({mean}), std=({std}) on 0..255, restored from {path.name}"
    data_hparams = data.get("datamodule_hyper_parameters") or {}
    return LoadedCheckpoint(
        path=path,
        global_step=int(data.get("global_step", 0)),
        crop_size=_int_or_none(data_hparams.get("crop_size")),
        batch_size=_int_or_none(data_hparams.get("batch_size")),
        task=task,
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def last_checkpoint_path(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoints/last.ckpt``: where a run keeps the checkpoint it resumes from
    (Lightning's ``ModelCheckpoint`` names it ``last``)."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """:func:`last_checkpoint_path` when a previous run left one (for resuming)."""
    path = last_checkpoint_path(run_dir)
    return path if path.is_file() else None
