"""One precision policy (issue #12): training, evaluation and fps timing pick the same dtype.

Training used to ask ``torch.cuda.is_bf16_supported()``, which counts *emulated* bf16, so a
pre-Ampere GPU trained in slow emulated bf16 while evaluation (native support only) ran fp16.
CUDA is mocked: the policy is decided before any kernel runs.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from loveda_utils import runtime
from loveda_utils.runtime import amp_dtype, precision_dtype, training_precision
from loveda_utils.training.recipe import QUICK
from loveda_utils.training.trainer import build_trainer


def _gpu(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    """A visible GPU, CUDA not initialised yet; bf16 natively (compute capability 8.0: Ampere and
    later) or only by emulation (earlier GPUs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime, "cuda_capability", lambda: (8, 0) if native_bf16 else (7, 5))


class _CapturedTrainer:
    """Stands in for ``L.Trainer``: a mocked GPU cannot run one, but its arguments can be read."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


@pytest.mark.parametrize(("native_bf16", "dtype", "precision"),
                         [(False, torch.float16, "16-mixed"), (True, torch.bfloat16, "bf16-mixed")])
def test_training_and_evaluation_pick_the_same_precision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, native_bf16: bool, dtype: torch.dtype, precision: str
) -> None:
    _gpu(monkeypatch, native_bf16)
    cuda = torch.device("cuda")
    assert amp_dtype(cuda) is dtype  # what evaluate() and measure_fps() autocast to
    monkeypatch.setattr(L, "Trainer", _CapturedTrainer)
    for accelerator in ("auto", "gpu", "cuda"):
        trainer = build_trainer(tmp_path, QUICK, accelerator=accelerator, progress=False)
        assert trainer.kwargs["precision"] == precision, accelerator
        assert precision_dtype(trainer.kwargs["precision"]) is dtype


def test_full_precision_off_cuda_and_an_explicit_choice_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert training_precision("auto") == training_precision("cpu") == "32-true"
    assert amp_dtype(torch.device("cpu")) is None and precision_dtype("32-true") is None
    _gpu(monkeypatch, native_bf16=False)
    monkeypatch.setattr(L, "Trainer", _CapturedTrainer)
    trainer = build_trainer(tmp_path, QUICK.replace(precision="32-true"), accelerator="gpu", progress=False)
    assert trainer.kwargs["precision"] == "32-true"
