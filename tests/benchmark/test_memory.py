"""MMSeg's Mem (loveda_utils/benchmark/memory.py): a probe training 4 images in fp32 at the row's
crop, whatever the run trained with; the CUDA allocator's peak in GiB (mocked here: the machine
has no GPU), the probe process's peak RSS elsewhere (a real fresh process)."""

from __future__ import annotations

import pytest
import torch

from loveda_utils.benchmark import memory
from loveda_utils.benchmark.memory import (
    MEM_BATCH,
    PeakMemory,
    measure_training_memory,
    probe_training_memory,
)
from loveda_utils.models.wrapper import SegmentationModel
from loveda_utils.runtime import GB

MODEL = "lraspp_mobilenet_v3_large"  # the quickest registry model on a CPU


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, torch.device]]:
    """torch.cuda's peak counters, logged; the allocator's peak is 1.25 GiB."""
    calls: list[tuple[str, torch.device]] = []

    def reset(device: torch.device) -> None:
        calls.append(("reset", torch.device(device)))

    def peak(device: torch.device) -> int:
        calls.append(("peak", torch.device(device)))
        return 5 * GB // 4

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", peak)
    return calls


def test_peak_memory_on_cuda_is_the_allocator_peak_since_a_reset_in_gib(fake_cuda) -> None:
    device = torch.device("cuda", 1)
    peak = PeakMemory(device)
    assert fake_cuda == [("reset", device)]
    assert peak.read() == 1.25
    assert fake_cuda == [("reset", device), ("peak", device)]
    assert peak.source == "torch.cuda.max_memory_allocated"


def test_peak_memory_without_cuda_is_the_resident_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: pytest.fail("CUDA read"))
    peak = PeakMemory("cpu")
    assert peak.source == "peak RSS"
    assert 0.05 < peak.read() < 64  # this process holds torch: tens of MiB at least


def test_probe_trains_4_images_in_fp32_and_reports_the_cuda_peak_in_gib(
    fake_cuda, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The steps run on the CPU (no GPU here); the counter and everything the probe decides
    # see CUDA.
    steps_run: list[tuple[torch.device, int, int, str | None, str, int]] = []
    real_steps = memory.train_steps

    def on_the_cpu(model, recipe, device, steps, seed=0):
        steps_run.append((device, recipe.batch_size, recipe.crop_size, recipe.precision,
                          recipe.optimizer, steps))  # fmt: skip
        fake_cuda.append(("train", device))
        real_steps(model, recipe, torch.device("cpu"), steps, seed)

    seen: list[tuple[tuple[int, ...], torch.dtype, bool, torch.dtype, bool]] = []
    forward_train = SegmentationModel.forward_train

    def spy(self, images):
        logits, aux = forward_train(self, images)
        seen.append((tuple(images.shape), next(self.parameters()).dtype,
                     torch.is_autocast_enabled("cpu"), logits.dtype,
                     torch.backends.cudnn.benchmark))  # fmt: skip
        return logits, aux

    monkeypatch.setattr(memory, "train_steps", on_the_cpu)
    monkeypatch.setattr(SegmentationModel, "forward_train", spy)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    result = probe_training_memory(MODEL, crop=32, device="cuda:0", steps=2)

    cuda = torch.device("cuda", 0)
    assert steps_run == [(cuda, 4, 32, "32-true", "sgd", 2)]
    # Batch 4 of 32 px crops, fp32 weights and activations, no autocast, cudnn's autotuner on
    # (MMSeg trains with it), one forward pass per step.
    assert seen == [((MEM_BATCH, 3, 32, 32), torch.float32, False, torch.float32, True)] * 2
    assert torch.backends.cudnn.benchmark is False  # restored
    # The peak is reset before the steps and read after them: 1.25 GiB.
    assert fake_cuda == [("reset", cuda), ("train", cuda), ("peak", cuda)]
    assert result.gb == 1.25 and result.source == "torch.cuda.max_memory_allocated"
    assert result.protocol() == {
        "batch": 4, "crop": 32, "precision": "32-true", "steps": 2, "optimizer": "sgd",
        "cudnn_benchmark": True,
    }  # fmt: skip


def test_probe_steps_update_the_weights_and_release_the_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recipe = memory.probe_recipe(32)
    from_recipe = memory.SegmentationTask.from_recipe
    torch.manual_seed(0)  # as train_steps seeds: the same initial weights
    before = from_recipe(MODEL, recipe).model.state_dict()
    trained: list[torch.nn.Module] = []

    def keep(model, recipe):
        task = from_recipe(model, recipe)
        trained.append(task.model)
        return task

    monkeypatch.setattr(memory.SegmentationTask, "from_recipe", keep)
    memory.train_steps(MODEL, recipe, torch.device("cpu"), steps=1)
    (model,) = trained
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # an optimiser step ran
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)


@pytest.mark.slow
def test_measure_runs_the_probe_in_a_fresh_process() -> None:
    result = measure_training_memory(MODEL, crop=32, device="cpu", steps=1)
    # A fresh interpreter holding torch and a model: above 100 MiB, far below the 64 GiB a
    # parent's size carried over fork + exec could show.
    assert result.source == "peak RSS" and 0.1 < result.gb < 64
    assert (result.batch, result.crop, result.precision, result.steps) == (4, 32, "32-true", 1)


@pytest.mark.slow
def test_a_failed_probe_says_what_failed_and_how_to_skip_it() -> None:
    with pytest.raises(RuntimeError, match=r"(?s)probe of 'no_such_model'.*mem_steps=0.*no_such"):
        measure_training_memory("no_such_model", crop=32, device="cpu", steps=1)


def test_the_probe_needs_a_step() -> None:
    with pytest.raises(ValueError, match="steps=0"):
        measure_training_memory(MODEL, crop=32, device="cpu", steps=0)
