"""GPU policy (issue #12, GPU and multi-GPU bugs), with ``torch.cuda`` mocked: no GPU needed.

- Preparing a run and building its Trainer never initialise CUDA (a fork-based DDP launch, the
  notebook's, refuses to start after that); the bf16 question is asked in another process.
- Training on CUDA turns on ``cudnn.benchmark`` for the fit only; BatchNorm is synchronised
  under DDP; the ``mmseg`` batch is per device (MMSeg's 4 GPUs x 4).
- A GPU recipe's full schedule is refused on the CPU unless asked for.
- Evaluation runs in fp32 unless AMP is asked for.
- The suite gives each model the parent's own GPUs and a share of its cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import write_tree

from loveda_utils import runtime
from loveda_utils.benchmark import suite
from loveda_utils.benchmark.config import BenchmarkConfig
from loveda_utils.benchmark.run import BenchmarkRun
from loveda_utils.cli import build_parser
from loveda_utils.cli import main as cli
from loveda_utils.cli.train import train_settings
from loveda_utils.errors import ConfigError
from loveda_utils.evaluation import loop
from loveda_utils.training.recipe import MMSEG, QUICK
from loveda_utils.training.sync_batchnorm import BatchNormSync
from loveda_utils.training.trainer import build_datamodule, build_trainer, fit

MODEL = "lraspp_mobilenet_v3_large"
#: ``torch.cuda`` functions that initialise CUDA in the calling process.
INITIALISING = ("_lazy_init", "init", "current_device", "set_device", "get_device_properties",
                "get_device_capability", "get_device_name", "is_bf16_supported", "synchronize",
                "mem_get_info", "memory_allocated", "max_memory_allocated", "reset_peak_memory_stats")
#: What the mocked initialising functions answer (the rest answer None).
ANSWERS = {"current_device": 0, "get_device_capability": (9, 0), "get_device_name": "Mock GPU",
           "is_bf16_supported": True,
           "get_device_properties": SimpleNamespace(major=9, minor=0, name="Mock GPU",
                                                    total_memory=80 * 2**30)}


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int = 2) -> list[str]:
    """``count`` visible GPUs and CUDA not initialised; returns the list every initialising
    ``torch.cuda`` call is recorded in (by name)."""
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)

    def recorder(name: str):
        def call(*args, **kwargs):
            calls.append(name)
            return ANSWERS.get(name)
        return call

    for name in INITIALISING:
        monkeypatch.setattr(torch.cuda, name, recorder(name))
    return calls


def _capability_probe(monkeypatch: pytest.MonkeyPatch, answer: str | None) -> list[list[str]]:
    """Answer the runtime's compute-capability probe (another interpreter) with ``answer``
    (``None``: the probe fails); other commands run for real. Returns the probe commands."""
    probes: list[list[str]] = []
    real_run = subprocess.run

    def run(cmd, *args, **kwargs):
        if cmd[:2] == [sys.executable, "-c"] and "get_device_capability" in cmd[2]:
            probes.append(cmd)
            if answer is None:
                raise subprocess.CalledProcessError(1, cmd)
            return subprocess.CompletedProcess(cmd, 0, stdout=answer, stderr="")
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(runtime.subprocess, "run", run)
    return probes


class _FakeTrainer:
    """Stands in for ``L.Trainer`` where no GPU can run one: keeps its arguments, sets
    ``cudnn.benchmark`` as Lightning does, and records the CUDA calls made before ``fit``."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.callbacks = kwargs["callbacks"]
        self.precision = kwargs["precision"]
        self.global_step, self.world_size, self.callback_metrics = 0, 1, {}
        torch.backends.cudnn.benchmark = kwargs["benchmark"]
        self.fit_saw: dict | None = None

    def fit(self, *args, **kwargs) -> None:
        self.fit_saw = {"cudnn_benchmark": torch.backends.cudnn.benchmark}


@pytest.fixture
def fake_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "Trainer", _FakeTrainer)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


def test_preparing_and_setting_up_training_leave_cuda_uninitialised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_trainer: None
) -> None:
    calls = _gpus(monkeypatch)
    probes = _capability_probe(monkeypatch, "9 0")
    config = BenchmarkConfig.from_params(dict(model=MODEL, data_root=str(write_tree(tmp_path / "loveda")),
                             recipe="quick", max_steps=2, batch_size=2, crop_size=32,
                             num_workers=0, results_dir=str(tmp_path / "results"), progress=False))
    run = BenchmarkRun(config).prepare()
    assert calls == [], f"prepare() initialised CUDA: {calls}"
    assert run.device == torch.device("cuda", 0)
    training = run.train()
    assert calls == [], f"setting up the Trainer initialised CUDA: {calls}"
    trainer = training.trainer
    assert trainer.fit_saw is not None and trainer.kwargs["precision"] == "bf16-mixed"
    assert len(probes) == 1  # the bf16 question went to another process


def test_compute_capability_comes_from_another_process_until_cuda_is_initialised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _gpus(monkeypatch)
    _capability_probe(monkeypatch, "7 5")
    assert runtime.cuda_capability() == (7, 5) and not runtime.native_bf16()
    assert runtime.amp_dtype(torch.device("cuda")) is torch.float16 and calls == []
    _capability_probe(monkeypatch, None)  # a failing probe: fp16, which every GPU runs
    assert runtime.cuda_capability() is None and runtime.amp_dtype(torch.device("cuda")) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # now torch may answer
    assert runtime.cuda_capability() == (9, 0) and calls == ["get_device_capability"]


def test_cuda_training_benchmarks_cudnn_for_the_fit_only_and_syncs_batchnorm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_trainer: None
) -> None:
    _gpus(monkeypatch)
    _capability_probe(monkeypatch, "9 0")
    recipe = QUICK.replace(max_steps=2, batch_size=2, crop_size=32)
    dm = build_datamodule(recipe, write_tree(tmp_path / "loveda"), num_workers=0)
    outcome = fit(recipe, dm, tmp_path / "run", model=MODEL, progress=False, devices=4)
    trainer = outcome.trainer
    assert trainer.kwargs["benchmark"] is True and trainer.fit_saw == {"cudnn_benchmark": True}
    assert torch.backends.cudnn.benchmark is False  # back for fps timing
    assert trainer.kwargs["sync_batchnorm"] is True
    (layer_sync,) = trainer.kwargs["plugins"]
    assert isinstance(layer_sync, BatchNormSync) and layer_sync.device_type == "cuda"
    # Deterministic runs and the CPU keep cuDNN's default algorithms.
    assert build_trainer(tmp_path, recipe, deterministic=True).kwargs["benchmark"] is False
    assert build_trainer(tmp_path, recipe, accelerator="cpu").kwargs["benchmark"] is False


def test_mmseg_batch_is_per_device_as_mmsegs_4xb4() -> None:
    # MMSeg's LoveDA configs: 4 GPUs x 4 images. The batch used to be 16 per device, so
    # `train --devices 4` trained 64 images a step.
    assert MMSEG.batch_size == 4 and build_datamodule(MMSEG).batch_size == 4
    assert MMSEG.batch_size * 4 == 16


def _no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_gpu_recipe_refuses_its_full_schedule_on_the_cpu_unless_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_trainer: None
) -> None:
    _no_gpu(monkeypatch)  # accelerator="auto" falls back to the CPU
    recipe = MMSEG.replace(pretrained="none", crop_size=32)  # still the 80k-step schedule
    dm = build_datamodule(recipe, write_tree(tmp_path / "loveda"), num_workers=0)
    with pytest.raises(ConfigError, match=r"recipe 'mmseg' trains 80000 steps, meant for a GPU.*"
                                          r"allow_cpu=True \(train --allow-cpu\)"):
        fit(recipe, dm, tmp_path / "a", model=MODEL, progress=False)
    assert fit(recipe, dm, tmp_path / "b", model=MODEL, progress=False, allow_cpu=True).trainer.fit_saw
    # A few steps (estimate's timing, tests) and the CPU recipe are not refused.
    assert fit(recipe, dm, tmp_path / "c", model=MODEL, progress=False, max_steps=6).trainer.fit_saw
    assert fit(recipe.replace(max_steps=2), dm, tmp_path / "d", model=MODEL, progress=False).trainer
    assert fit(QUICK, dm, tmp_path / "e", model=MODEL, progress=False).trainer.fit_saw


def test_train_command_names_allow_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_gpu(monkeypatch)
    code = cli(["train", "--model", MODEL, "--run-dir", str(tmp_path / "run"), "--data-root",
                str(write_tree(tmp_path / "loveda")), "--pretrained", "none"])
    assert code == 2 and "--allow-cpu" in capsys.readouterr().err
    parse = build_parser().parse_args
    assert train_settings(parse(["train", "--model", MODEL, "--run-dir", "r"]))[1]["allow_cpu"] is False
    assert train_settings(parse(["train", "--model", MODEL, "--run-dir", "r", "--allow-cpu"]))[1][
        "allow_cpu"] is True


def test_evaluation_is_fp32_on_cuda_unless_amp_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch)
    _capability_probe(monkeypatch, "9 0")
    chosen: list[torch.dtype | None] = []

    class Stop(Exception):
        pass

    def spy(device: torch.device, amp=None):
        chosen.append(runtime.amp_dtype(device, amp))
        raise Stop  # the dtype is chosen; nothing can run on a mocked GPU

    monkeypatch.setattr(loop, "amp_dtype", spy)
    for kwargs in ({}, {"amp": True}):
        with pytest.raises(Stop):
            loop.evaluate(lambda images: images, [], device="cuda", **kwargs)
    assert chosen == [None, torch.bfloat16]
    assert BenchmarkConfig(model=MODEL).eval_amp is False


def test_suite_children_get_the_parents_gpus_and_a_share_of_its_cores(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _gpus(monkeypatch, count=2)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(32)))
    monkeypatch.delenv(runtime.CORES_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # e.g. a scheduler's allocation
    assert suite.visible_gpus() == ["2", "3"]
    children: list[tuple[str, str | None]] = []

    real_run = subprocess.run

    def run(cmd, *args, **kwargs):
        if "papermill" not in cmd:  # the pre-flight's own commands
            return real_run(cmd, *args, **kwargs)
        env = kwargs["env"]
        children.append((env["CUDA_VISIBLE_DEVICES"], env.get(runtime.CORES_ENV)))
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(suite.subprocess, "run", run)
    root = write_tree(tmp_path / "l")
    suite.run_suite("quick", models=["unet_resnet18", MODEL], data_root=root,
                    results_dir=tmp_path / "results", render=False, log=lambda line: None, check=False)
    assert sorted(children) == [("2", "16"), ("3", "16")]
    children.clear()  # --gpus 1: this process's device 1, physical GPU 3
    suite.run_suite("quick", models=["unet_resnet18"], data_root=root, force=True, gpus=["1"],
                    results_dir=tmp_path / "results", render=False, log=lambda line: None, check=False)
    assert children == [("3", None)]  # one model at a time: every core
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa, GPU-bb,GPU-cc")  # UUIDs; CUDA counts 2
    assert suite.visible_gpus() == ["GPU-aa", "GPU-bb"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert suite.visible_gpus() == ["0", "1"]
    assert runtime.CORES_ENV not in suite.child_env("0", parallel=1)
