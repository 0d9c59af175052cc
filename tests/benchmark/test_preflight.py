"""The pre-flight: each check refuses what would stop a long run, names the fix, builds models
only on the meta device, and run-suite refuses to start (exit 2) before claiming any folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from loveda_utils.benchmark import footprint as fp_module
from loveda_utils.benchmark import preflight as pf
from loveda_utils.benchmark.footprint import (
    CUDA_OVERHEAD_BYTES,
    footprint,
    saved_for_backward_bytes,
    training_memory_bytes,
)
from loveda_utils.benchmark.measure import count_params
from loveda_utils.benchmark.profiles import PROFILES, Profile
from loveda_utils.benchmark.suite import plan, run_suite, runs_to_start
from loveda_utils.cli import main as cli
from loveda_utils.errors import PreflightError
from loveda_utils.models import fetch
from loveda_utils.models.wrapper import SegmentationModel, build_model
from loveda_utils.results.references import load_references
from loveda_utils.runtime import GB

QUICK_MODEL = "lraspp_mobilenet_v3_large"


@pytest.fixture(autouse=True)
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh machine: empty torch hub and Hugging Face caches."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "machine" / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "machine" / "hf"))
    return tmp_path / "machine"


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch):
    """torch.cuda mocked: one 16 GiB device with native bf16, CUDA initialised in this process
    (so that torch answers here rather than a throwaway interpreter)."""
    props = SimpleNamespace(name="Mock GPU", total_memory=16 * GB)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    return props



def _planned(*args, **kwargs):
    """The runs the pre-flight checks: the suite's plan, claiming nothing, done runs left out."""
    return runs_to_start(plan(*args, claim=False, **kwargs))

def rows(report: pf.PreflightReport, check: str) -> list[pf.Finding]:
    return [f for f in report.findings if f.check == check]


# -- the whole pre-flight --------------------------------------------------------------------


def test_quick_profile_on_the_mini_loveda_passes_and_builds_on_meta_only(
    mini_loveda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[SegmentationModel] = []
    init = SegmentationModel.__init__

    def spy(self: SegmentationModel, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(SegmentationModel, "__init__", spy)
    report = pf.preflight("quick", None, mini_loveda, tmp_path / "results", devices=[])
    assert report.ok, report.format()
    assert [f.check for f in report.findings] == (
        ["data", "data"] + ["weights"] * len(PROFILES["quick"].models) + ["gpu", "disk", "results"])
    assert {f.subject for f in rows(report, "data")} == {"Train/Urban,Rural", "Val/Urban,Rural"}
    assert "mini-LoveDA (synthetic), complete" in rows(report, "data")[0].detail
    assert "pre-flight passed." in report.format()
    # One build per model, every parameter and buffer on the meta device: no weights allocated.
    assert len(built) == len(PROFILES["quick"].models)
    for model in built:
        assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert not (tmp_path / "results").exists()  # a check claims nothing


def test_mmseg_profile_on_a_fresh_cpu_machine_refuses_with_every_fix(
    mini_loveda: Path, tmp_path: Path
) -> None:
    report = pf.preflight("mmseg", None, mini_loveda, tmp_path / "results", devices=[])
    assert not report.ok
    refused = {f.check for f in report.refused}
    assert refused == {"data", "weights", "gpu"}
    assert "not the LoveDA release" in rows(report, "data")[0].detail
    assert len(rows(report, "weights")) == len(PROFILES["mmseg"].models)
    text = report.format()
    assert "refused to start: " in text and "--skip-check" in text
    # One fetch command for all of them: the whole profile's weights.
    assert text.count("fetch-weights --profile mmseg") == 1
    assert "--allow-cpu" in text and "download-data" in text

    allowed = pf.preflight("mmseg", None, mini_loveda, tmp_path / "results", devices=[],
                           allow_cpu=True)
    (gpu,) = rows(allowed, "gpu")
    assert gpu.status == pf.ALLOWED and not gpu.refused


def test_only_runs_without_a_record_are_checked(mini_loveda: Path, tmp_path: Path) -> None:
    from record_factory import make_record, write_run

    results = tmp_path / "results"
    quick = PROFILES["quick"]
    recipe = dict(quick.models[QUICK_MODEL])  # the quick recipe's crop, this model's schedule
    record = make_record((QUICK_MODEL, "LRASPP", "MobileNetV3-L"), synthetic=True,
                         crop_size=128, lr_schd=recipe["max_steps"])
    write_run(results, record)
    runs = _planned(quick, None, mini_loveda, results)
    assert QUICK_MODEL not in [r.model for r in runs] and len(runs) == len(quick.models) - 1
    forced = _planned(quick, None, mini_loveda, results, force=True)
    assert QUICK_MODEL in [r.model for r in forced]
    # A profile with variants: one run per model and variant (cross-domain: Urban, Rural).
    cross = _planned("cross-domain", [QUICK_MODEL], mini_loveda, results)
    assert [r.config.train_scenes for r in cross] == ["urban", "rural"]


# -- data ------------------------------------------------------------------------------------


def test_incomplete_real_data_is_refused(real_sample: Path, tmp_path: Path) -> None:
    """16 real Train/Rural tiles: the quick profile also trains on Urban and evaluates on Val."""
    report = pf.preflight("quick", [QUICK_MODEL], real_sample, tmp_path / "results", devices=[])
    train, val = rows(report, "data")
    assert train.refused and val.refused
    assert "Train/Urban folder missing" in train.detail or "release tiles missing" in train.detail
    assert "--complete" in train.fix and f"download-data {real_sample}" in train.fix
    assert "Val/ missing" in val.detail


def test_a_tree_of_other_tiles_is_refused_naming_a_file(tiny_tree: Path, tmp_path: Path) -> None:
    report = pf.preflight("quick", [QUICK_MODEL], tiny_tree, tmp_path / "results", devices=[])
    data = rows(report, "data")
    assert data and all(f.refused for f in data)
    assert str(tiny_tree) in data[0].detail and "more)" in data[0].detail


def test_eval_split_and_scenes_come_from_the_parameters(mini_loveda: Path, tmp_path: Path) -> None:
    report = pf.preflight("quick", [QUICK_MODEL], mini_loveda, tmp_path / "r", devices=[],
                          overrides={"train_scenes": "rural", "eval_split": "test",
                                     "eval_scenes": "urban"})
    assert [f.subject for f in rows(report, "data")] == ["Train/Rural", "Test/Urban"]


# -- weights ---------------------------------------------------------------------------------


def test_weights_are_found_in_the_cache_or_their_fetch_command_named(
    mini_loveda: Path, tmp_path: Path, empty_caches: Path
) -> None:
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import get_encoder

    model, settings = "unet_resnet18", {"pretrained": "imagenet"}
    report = pf.preflight("quick", [model], mini_loveda, tmp_path / "r", devices=[],
                          overrides=settings)
    (row,) = rows(report, "weights")
    assert row.refused and "smp-hub/resnet18.imagenet/model.safetensors missing" in row.detail
    assert f"fetch-weights --models {model} --pretrained imagenet" in row.fix

    # A real encoder file placed the way fetch-weights --from places it.
    (file,) = fetch.needed_files([model], "imagenet")
    source = tmp_path / "mirror" / fetch.layout_path(file)
    source.parent.mkdir(parents=True)
    save_file(get_encoder("resnet18").state_dict(), str(source))
    assert all(r.ok for r in fetch.import_files([file], tmp_path / "mirror"))
    report = pf.preflight("quick", [model], mini_loveda, tmp_path / "r", devices=[],
                          overrides=settings)
    (row,) = rows(report, "weights")
    assert row.status == pf.OK and "model.safetensors present" in row.detail


def test_an_evaluated_checkpoint_must_exist(mini_loveda: Path, tmp_path: Path) -> None:
    report = pf.preflight("quick", [QUICK_MODEL], mini_loveda, tmp_path / "r", devices=[],
                          overrides={"checkpoint": str(tmp_path / "gone.ckpt")})
    (row,) = rows(report, "weights")
    assert row.refused and "gone.ckpt does not exist" in row.detail
    assert [f.subject for f in rows(report, "data")] == ["Val/Urban,Rural"]  # no training


# -- GPU and its memory (torch.cuda mocked) ----------------------------------------------------


def test_visible_devices_and_a_model_too_big_for_them(one_gpu, mini_loveda: Path, tmp_path: Path) -> None:
    (device,) = pf.cuda_devices()
    assert device.total_bytes == 16 * GB and "Mock GPU" in str(device)
    with pytest.raises(Exception, match="--gpus '3'"):
        pf.cuda_devices(["3"])

    model = "deeplabv3plus_resnet101"
    # 16 images per device (the mmseg recipe's 4 per device x 4 on one GPU) do not fit 16 GB.
    big = _planned("mmseg", [model], mini_loveda, tmp_path / "r", overrides={"batch_size": 16})
    findings = pf.check_devices(big, [device])
    gpu, memory = findings
    assert gpu.status == pf.OK and "Mock GPU" in gpu.detail
    expected = training_memory_bytes(footprint(model, 16, 512), "sgd", mixed_precision=True)
    assert memory.refused and f"~{expected / GB:.1f} GB" in memory.detail
    assert "batch 16, 512 px, bf16-mixed" in memory.detail and "--set batch_size" in memory.fix
    assert pf.check_devices(big, [device], allow_memory=True)[1].status == pf.ALLOWED

    # The recipe's own per-device batch fits.
    (run,) = _planned("mmseg", [model], mini_loveda, tmp_path / "r")
    batch = run.config.training_recipe.batch_size
    fits = pf.check_devices([run], [device])[1]
    assert fits.status == pf.OK and f"batch {batch}, 512 px" in fits.detail


def test_devices_are_read_without_initialising_cuda_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA not initialised in this process: a throwaway interpreter reads the devices (this
    machine's child sees none), and this process never asks torch for a device's properties."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: pytest.fail("CUDA initialised in this process"))
    if torch.cuda.device_count() == 0:  # no real GPU: the child's answer is empty
        assert pf.cuda_devices() == []


def test_the_memory_estimate_meets_mmsegs_measured_peaks() -> None:
    """MMSeg's LoveDA table (fp32, 4 images of 512 px per GPU): our estimate of the same
    architectures lands within a third of their measured peak allocator memory."""
    measured = {(r.method, r.backbone): r.mem_gb for r in load_references() if r.mem_gb}
    for model, key in (("pspnet_resnet101", ("PSPNet", "R-101-D8")),
                       ("deeplabv3plus_resnet18", ("DeepLabV3+", "R-18-D8"))):
        estimate = training_memory_bytes(footprint(model, 4, 512), "sgd", mixed_precision=False)
        allocated = (estimate - CUDA_OVERHEAD_BYTES) / GB
        assert allocated == pytest.approx(measured[key], rel=0.33), model


def test_meta_counts_equal_a_real_build_and_a_real_forward() -> None:
    real = build_model(QUICK_MODEL, pretrained="none")
    batch = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    meta = footprint(QUICK_MODEL, 2, 64)
    assert meta.params == round(count_params(real) * 1e6)
    assert meta.saved_bytes == saved_for_backward_bytes(real, batch)
    assert meta.checkpoint_bytes == meta.params * 4 * fp_module.CHECKPOINT_COPIES


def test_a_model_the_meta_device_cannot_build_is_skipped_not_refused(
    one_gpu, mini_loveda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pf.footprint

    def footprint_or_fail(name: str, *args):
        if name == QUICK_MODEL:
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")
        return real(name, *args)

    monkeypatch.setattr(pf, "footprint", footprint_or_fail)
    report = pf.preflight("quick", [QUICK_MODEL, "unet_resnet18"], mini_loveda, tmp_path / "r")
    assert report.ok, report.format()
    (skipped,) = rows(report, "footprint")
    assert skipped.subject == QUICK_MODEL and "meta tensors" in skipped.detail
    assert [f.subject for f in rows(report, "gpu memory")] == ["unet_resnet18"]
    assert f"{QUICK_MODEL} not counted" in rows(report, "disk")[0].detail


def test_no_gpu_needed_no_gpu_asked(mini_loveda: Path, tmp_path: Path) -> None:
    runs = _planned("quick", [QUICK_MODEL], mini_loveda, tmp_path / "r")
    (row,) = pf.check_devices(runs, [])
    assert row.status == pf.OK and "run on the CPU" in row.detail


# -- disk and results folder -----------------------------------------------------------------


def test_the_disk_budget_counts_checkpoints_and_predictions(
    mini_loveda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"save_predictions": True, "visual_tiles": 0}
    report = pf.preflight("quick", [QUICK_MODEL], mini_loveda, tmp_path / "r", devices=[],
                          overrides=settings)
    (run,) = _planned("quick", [QUICK_MODEL], mini_loveda, tmp_path / "r", overrides=settings)
    _, tiles = pf.check_data([run], mini_loveda)
    sizes = pf.run_bytes(run, footprint(QUICK_MODEL), tiles)
    val_tiles = len(list((mini_loveda / "Val").glob("*/images_png/*.png")))
    side = 96  # the mini_loveda fixture's tiles
    assert sizes["predictions"] == int(val_tiles * pf.PREDICTION_BYTES_PER_MPIX * side * side / 1e6)
    assert sizes["checkpoints"] == footprint(QUICK_MODEL).params * 12
    (disk,) = rows(report, "disk")
    assert disk.status == pf.OK and f"~{sum(sizes.values()) / GB:.2f} GB" in disk.detail

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: usage._replace(free=1_000_000))
    report = pf.preflight("quick", [QUICK_MODEL], mini_loveda, tmp_path / "r", devices=[])
    (disk,) = rows(report, "disk")
    assert disk.refused and "of 0.0 GB free" in disk.detail and "--results-dir" in disk.fix


def test_a_results_folder_that_cannot_be_written_is_refused(mini_loveda: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    report = pf.preflight("quick", [QUICK_MODEL], mini_loveda, blocker / "results", devices=[])
    (row,) = rows(report, "results")
    assert row.refused and "is a file" in row.detail and "--results-dir" in row.fix
    (row,) = rows(pf.preflight("quick", [QUICK_MODEL], mini_loveda, tmp_path, devices=[]), "results")
    assert row.status == pf.OK and row.detail == "writable"


# -- run-suite -------------------------------------------------------------------------------


def test_run_suite_check_prints_the_table_and_exit_codes(mini_loveda: Path, tmp_path: Path,
                                                        capsys) -> None:
    base = ["run-suite", "--data-root", str(mini_loveda), "--results-dir", str(tmp_path / "r")]
    assert cli([*base, "--models", QUICK_MODEL, "--check"]) == 0
    out = capsys.readouterr().out
    assert "check" in out and "pre-flight passed." in out

    assert cli([*base, "--profile", "mmseg", "--models", QUICK_MODEL, "--check"]) == 2
    assert "refused to start: " in capsys.readouterr().out

    # Without --check: the same table, then a one-line error; nothing claimed, nothing run.
    assert cli([*base, "--profile", "mmseg", "--models", QUICK_MODEL]) == 2
    captured = capsys.readouterr()
    assert "refused to start: " in captured.out
    assert captured.err.startswith("error: pre-flight refused") and captured.err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_run_suite_refuses_before_claiming_a_folder(mini_loveda: Path, tmp_path: Path) -> None:
    profile = Profile(name="gpu", description="", models={QUICK_MODEL: {}}, params={}, recipe="mmseg")
    lines: list[str] = []
    with pytest.raises(PreflightError) as info:
        run_suite(profile, data_root=mini_loveda, results_dir=tmp_path / "r", readme=None,
                  gpus=[], log=lines.append)
    assert info.value.report.refused and "refused to start" in "\n".join(lines)
    assert not (tmp_path / "r" / "runs").exists()
