"""The demo (``./workbook demo`` = ``run-suite --profile quick``): it runs its models into the
git-ignored demo folder, renders its comparison there, skips what is done, and never touches the
project's published results or the README."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, write_tree

from loveda_utils import paths
from loveda_utils.benchmark import run as run_module
from loveda_utils.benchmark.config import BenchmarkConfig
from loveda_utils.benchmark.profiles import PROFILES, results_dir_for
from loveda_utils.benchmark.run import BenchmarkRun
from loveda_utils.cli import main as cli
from loveda_utils.errors import ConfigError

MODEL = "lraspp_mobilenet_v3_large"  # the quickest registry model on a CPU
#: tests/benchmark/test_run.py's tiny parameters, as --set pairs.
TINY = ("pretrained=none max_steps=2 batch_size=2 crop_size=32 fps_images=2 fps_size=null "
        "flops_size=64 visual_tiles=2 num_workers=0 fps_warmup=1 ms_flip=false").split()


@pytest.fixture(scope="module")
def tiny_mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loveda_utils.data.synthetic import generate_mini_loveda

    return generate_mini_loveda(tmp_path_factory.mktemp("tiny") / "mini", tiles=2, size=64, seed=1)


def test_each_profile_names_its_results_folder(tiny_mini: Path, tmp_path: Path) -> None:
    assert PROFILES["quick"].results_dir == paths.DEMO_RESULTS_DIR
    assert PROFILES["mmseg"].results_dir == paths.RESULTS_DIR
    assert PROFILES["cross-domain"].results_dir == paths.CROSS_DOMAIN_RESULTS_DIR
    real = write_tree(tmp_path / "LoveDA", splits=("Val",), n=1, size=32)
    for name, profile in PROFILES.items():
        assert results_dir_for(name, None, real) == profile.results_dir
        assert results_dir_for(name, tmp_path / "mine", tiny_mini) == tmp_path / "mine"
    assert results_dir_for("quick", None, tiny_mini) == paths.DEMO_RESULTS_DIR
    # Synthetic runs never go into the published folders, named or by default.
    for name in ("mmseg", "cross-domain"):
        with pytest.raises(ConfigError, match="synthetic mini-LoveDA"):
            results_dir_for(name, None, tiny_mini)
    with pytest.raises(ConfigError, match=str(paths.DEMO_RESULTS_DIR)):
        results_dir_for("quick", paths.RESULTS_DIR, tiny_mini)


def test_the_demo_folder_is_git_ignored_and_the_published_ones_are_not() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(folder: Path) -> bool:
        path = (folder / "runs" / "x" / "metrics.json").relative_to(REPO)
        return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO).returncode == 0

    assert ignored(paths.DEMO_RESULTS_DIR)
    assert not any(ignored(folder) for folder in paths.PUBLISHED_RESULTS_DIRS)


def test_a_synthetic_suite_into_the_published_results_fails_before_claiming_a_folder(
    tiny_mini: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = paths.RESULTS_DIR / "runs"
    before = sorted(runs.iterdir()) if runs.is_dir() else None
    assert cli(["run-suite", "--profile", "mmseg", "--data-root", str(tiny_mini), "--no-render"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--results-dir" in err and "LOVEDA_ROOT" in err
    assert (sorted(runs.iterdir()) if runs.is_dir() else None) == before


def test_notebook_03_puts_a_synthetic_run_into_the_demo_folder(
    tiny_mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a results_dir, a run on the mini-LoveDA goes to the demo folder, one on LoveDA
    to the project's results (``BenchmarkRun.prepare`` claims the folder)."""
    monkeypatch.setattr(run_module, "DEMO_RESULTS_DIR", tmp_path / "demo")
    monkeypatch.setattr(run_module, "RESULTS_DIR", tmp_path / "results")
    real = write_tree(tmp_path / "LoveDA", splits=("Train", "Val"), n=1, size=64)
    for root, folder in ((tiny_mini, "demo"), (real, "results")):
        config = BenchmarkConfig.from_params(dict(model=MODEL, data_root=str(root), recipe="quick", crop_size=32,
                                 num_workers=0))
        run = BenchmarkRun(config).prepare()
        assert run.run_dir.parent == tmp_path / folder / "runs"


@pytest.mark.slow
def test_the_demo_runs_its_models_then_skips_them(
    tiny_mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    demo = tmp_path / "demo"  # a fresh demo folder, as on a fresh clone
    monkeypatch.setitem(PROFILES, "quick", dataclasses.replace(PROFILES["quick"], results_dir=demo))
    readme = (REPO / "README.md").read_bytes()
    settings = [arg for pair in TINY for arg in ("--set", pair)]
    command = ["run-suite", "--profile", "quick", "--models", MODEL, "--data-root", str(tiny_mini),
               *settings]
    assert cli(command) == 0
    out = capsys.readouterr().out
    (record_path,) = demo.glob("runs/*/metrics.json")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    assert record["model"] == MODEL and record["dataset"]["synthetic"] is True
    assert f"results in {demo}" in out and "1 done, 0 skipped, 0 failed" in out
    html = demo / "04_results_comparison.html"
    assert html.is_file() and f"comparison (open in a browser): {html}" in out
    assert (demo / "benchmark.md").is_file()
    assert (REPO / "README.md").read_bytes() == readme  # the demo never rewrites the README

    # Again: nothing to run, the record untouched.
    before = record_path.read_bytes()
    assert cli([*command, "--no-render"]) == 0
    out = capsys.readouterr().out
    assert "0 to run" in out and "already done" in out and "0 done, 1 skipped, 0 failed" in out
    assert list(demo.glob("runs/*/metrics.json")) == [record_path]
    assert record_path.read_bytes() == before
    assert (REPO / "README.md").read_bytes() == readme
