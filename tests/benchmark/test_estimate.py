"""``estimate`` projects a run's evaluation in the precision that evaluation runs in.

The table's evaluation is fp32 on every device unless a run asks for ``eval_amp``
(``BenchmarkConfig.eval_amp``); the estimate used to time its evaluation forward under the
runtime's AMP on CUDA whatever the parameters said.
"""

from __future__ import annotations

import pytest
import torch
from pixel_net import PixelNet
from torch.utils.data import DataLoader

from loveda_utils import runtime
from loveda_utils.benchmark.config import BenchmarkConfig
from loveda_utils.benchmark.estimate import evaluation_settings
from loveda_utils.data.datamodule import collate
from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.evaluation.loop import evaluate

CUDA = torch.device("cuda")  # only a name here: nothing runs on it


def test_the_default_evaluation_is_projected_in_fp32_on_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    assert BenchmarkConfig.eval_amp is False
    assert evaluation_settings(CUDA, {}) == (None, False)  # fp32, NCHW: as the table evaluates
    assert evaluation_settings(CUDA, {"eval_amp": False}) == (None, False)


@pytest.mark.parametrize("native, dtype", [(True, torch.bfloat16), (False, torch.float16)])
def test_eval_amp_is_projected_under_the_runtimes_autocast(
    monkeypatch: pytest.MonkeyPatch, native: bool, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(runtime, "native_bf16", lambda: native)
    assert evaluation_settings(CUDA, {"eval_amp": True}) == (dtype, True)
    assert evaluation_settings(CUDA, {"eval_amp": True, "channels_last": False}) == (dtype, False)


@pytest.mark.parametrize(
    "params",
    [{}, {"eval_amp": True}, {"channels_last": False}, {"eval_amp": True, "channels_last": True}],
)
def test_the_projection_runs_as_evaluate_runs(tiny_tree, params: dict) -> None:
    """On the CPU (where it can run), what the estimate times is what ``evaluate`` ran with the
    same parameters, as ``BenchmarkRun.evaluate`` passes them."""
    cpu = torch.device("cpu")
    loader = DataLoader(
        LoveDASegmentation(tiny_tree, "val", "both"), batch_size=1, collate_fn=collate
    )
    result = evaluate(
        PixelNet(),
        loader,
        device=cpu,
        limit_images=1,
        amp=params.get("eval_amp", BenchmarkConfig.eval_amp),
        channels_last=params.get("channels_last", BenchmarkConfig.channels_last),
    )
    dtype, channels_last = evaluation_settings(cpu, params)
    assert result.settings["amp"] == (None if dtype is None else str(dtype).removeprefix("torch."))
    assert result.settings["channels_last"] == channels_last
