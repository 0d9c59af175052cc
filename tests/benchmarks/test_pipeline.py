"""The pipeline benchmark (``python -m benchmarks.pipeline``): it runs end to end.

Tiny on purpose (64 px tiles, 2 tiles per pass, one round): it checks that every section and
every ratio line is printed, ratios last, and that our path and torchgeo's score the same data
with the same weights identically. It asserts nothing about speed: timings belong to the
benchmark's own run (benchmarks/RESULTS.md), never to a test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from benchmarks.pipeline.cli import MEASUREMENTS, main
from benchmarks.pipeline.report import TARGETS, WITHDRAWN, Ratio, withdrawal
from benchmarks.pipeline.settings import Settings

TINY = [
    "--model", "lraspp_mobilenet_v3_large",
    "--size", "64",
    "--tiles", "2",
    "--rounds", "1",
    "--workers", "0",
    "--threads", "1",
    "--train-steps", "2",
    "--train-warmup", "1",
    "--train-batch", "1",
    "--fps-images", "1",
    "--memory-tiles", "2,3",
]  # fmt: skip


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One run of every measurement (all of MEASUREMENTS), its stdout."""
    import contextlib
    import io

    work = tmp_path_factory.mktemp("bench")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([*TINY, "--work-dir", str(work)])
    assert code == 0
    # The tiles were written to the work folder (never into the repository).
    assert list(Path(work).glob("synthetic-64px/MINI_LOVEDA.json"))
    return stdout.getvalue()


def test_every_section_and_ratio_is_printed_ratios_last(output: str) -> None:
    lines = output.strip().splitlines()
    table = [
        ln for ln in lines if re.match(r"^(eval|torchgeo|train|fps|memory|ablation|kernel) ", ln)
    ]
    sections = {ln.split()[0] for ln in table}
    assert sections == {"eval", "torchgeo", "train", "fps", "memory", "ablation", "kernel"}
    paths = "\n".join(table)
    for path in (
        "ceiling: forward only",
        "ours: PNG -> confusion matrix",
        "torchgeo (as shipped)",
        "torchgeo + channels_last model",
        "ours: SegmentationTask + Trainer",
        "plain PyTorch loop",
        "measure_fps (ours, mean)",
        "torch.utils.benchmark (mean)",
        "evaluate 2 tiles (fresh process)",
        "evaluate 3 tiles (fresh process)",
        "channels_last off (NCHW model)",
        "no read-ahead (one tile at a time)",
        "decode image + mask: read_png (imagecodecs)",
        "confusion: one bincount (PerSceneConfusion.update)",
    ):
        assert path in paths, path

    ratios = [ln for ln in lines if ln.startswith("ratio ")]
    names = [re.match(r"ratio (.+?)\s{2,}", ln).group(1).strip() for ln in ratios]
    assert names == [
        "ours/ceiling",
        "ours/torchgeo",
        "lightning/plain steps",
        "fps ours/independent",
        "memory 3/2 tiles",
    ]
    # The ratios come last, each with a number and a verdict against its target.
    assert lines[-len(ratios) :] == ratios
    for line in ratios:
        assert re.search(r"\d+\.\d{3}\s+target .+ (MET|NOT MET)", line), line
    # The ceiling ratio also says what our path adds per tile, in milliseconds, beside the
    # decode and count time per tile it cannot avoid, measured in the same run.
    found = re.search(
        r"ours adds -?\d+\.\d ms/tile .+ to a \d+\.\d ms forward, beside what it cannot avoid "
        r".+: decode (\d+\.\d) ms/tile .+ labels \+ count (\d+\.\d) ms/tile",
        ratios[0],
    )
    assert found, ratios[0]
    # Where the numbers come from is printed with them.
    assert "# machine:" in output and "# versions:" in output and "load average" in output


def _settings(device: str = "cpu", cpus: int = 2, threads: int = 2) -> Settings:
    return Settings(torch.device(device), 1, 0, 1, True, None, threads=threads, cpus=cpus)


def test_the_light_512px_target_is_withdrawn_on_a_2_core_cpu_only() -> None:
    light = "ours/ceiling light"
    reason = withdrawal(light, 512, _settings())
    assert reason is not None and reason.startswith("2-core CPU: ")
    # Every other target and size keeps its target on the same machine.
    others = [(t, s) for t in TARGETS for s in (256, 512, 1024) if (t, s) not in WITHDRAWN]
    assert (light, 1024) in others and ("ours/ceiling heavy", 512) in others
    assert all(withdrawal(t, s, _settings()) is None for t, s in others)
    # Where decoding can overlap the forward pass, the light target stands at 512 px too.
    assert withdrawal(light, 512, _settings(cpus=8, threads=8)) is None
    assert withdrawal(light, 512, _settings(threads=1)) is None  # a core left free
    assert withdrawal(light, 512, _settings(device="cuda")) is None


def test_a_withdrawn_ratio_prints_as_a_measurement_not_a_miss() -> None:
    args = ("ours/ceiling", "lraspp_mobilenet_v3_large 512px", 0.5, "ours/ceiling light", "d")
    withdrawn = Ratio(*args, withdrawn="2-core CPU: why")
    line = withdrawn.format()
    assert withdrawn.met is None  # --strict counts only ratios whose met is False
    want = r" 0\.500  no target, MEASURED  \(target >= 0\.90 withdrawn on this 2-core CPU: why; d\)$"
    assert re.search(want, line), line
    assert "NOT MET" not in line
    held = Ratio(*args)
    assert held.met is False
    assert re.search(r" 0\.500  target >= 0\.90 +NOT MET  \(d\)$", held.format())


def test_ours_and_torchgeo_score_identically(output: str) -> None:
    line = next(
        ln for ln in output.splitlines() if ln.startswith("# torchgeo unet_resnet18 64px: mIoU")
    )
    found = re.findall(r"mIoU ours (\d\.\d+) vs (.+?) (\d\.\d+) \((.+?)\)", line)
    assert [label for _, label, _, _ in found] == ["(as shipped)", "+ channels_last model"]
    for ours, _, theirs, _ in found:
        assert float(ours) == float(theirs) > 0
    # Same kernels (both channels-last): the same prediction for every pixel.
    assert found[1][3] == "identical confusion matrices"


def test_bad_flags_are_refused_with_the_flag_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--measure", "ceiling,speed"]) == 2
    assert "--measure speed" in capsys.readouterr().err
    assert main(["--size", "100", "--measure", "fps"]) == 2
    assert "--size" in capsys.readouterr().err
    assert set(MEASUREMENTS) >= {"ceiling", "ours", "torchgeo", "train", "fps", "memory"}


def test_decoder_comparison_script(tmp_path: Path) -> None:
    """benchmarks/decoders.py times the decoders on real PNG files and checks their pixels."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "decoders.py"
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--passes", "1"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "# 2 files, 56x40 RGB" in out
    for name in ("imagecodecs png_decode", "loveda_utils.data.pngio.read_png", "torchvision io.decode_png"):
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        assert line.endswith("same pixels as Pillow"), line
    assert "DIFFERENT" not in out


def test_the_fps_check_times_the_tables_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fps section checks ``SpeedResult.fps`` (MMSeg's mean, what the table publishes), not
    the per-image median kept beside it."""
    import argparse

    from benchmarks.pipeline import fps as fps_section
    from benchmarks.pipeline.report import Report
    from loveda_utils.benchmark.measure import MMSEG_SETTINGS, SpeedResult

    def measured(*args, **kwargs) -> SpeedResult:
        return SpeedResult(fps=2.0, fps_spread=0.0, fps_median=4.0, n_images=1, warmup=0,
                           size=16, device="CPU", settings=MMSEG_SETTINGS)  # fmt: skip

    monkeypatch.setattr(fps_section, "measure_fps", measured)
    report = Report()
    args = argparse.Namespace(fps_model="lraspp_mobilenet_v3_large", fps_size=32, fps_images=1)
    fps_section.measure_fps_check(report, args, _settings(threads=1))
    ours = next(row for row in report.rows if row.path.startswith("measure_fps"))
    assert ours.path == "measure_fps (ours, mean)"
    assert ours.seconds == [0.5]  # 1 / fps, not 1 / fps_median


def test_our_path_runs_in_the_ceilings_precision(tiny_tree: Path) -> None:
    """On CUDA the ceiling runs under autocast; our path must too (``evaluate()`` alone is fp32),
    else the ratio compares fp32 with AMP. Shown on the CPU with bf16 autocast asked for."""
    from benchmarks.pipeline.ceiling import run_ours
    from benchmarks.pipeline.tiles import Tiles

    settings = Settings(torch.device("cpu"), 1, 0, 1, False, torch.bfloat16, threads=1, cpus=2)
    tiles = Tiles(tiny_tree, n=2, size=64, scenes=("Urban", "Rural"), source="test tree")
    model = torch.nn.Conv2d(3, 7, 1)
    _, result = run_ours(lambda x: model(x.float()), tiles, settings)
    assert result.settings["amp"] == "bfloat16" and result.settings["channels_last"] is False
    fp32 = Settings(torch.device("cpu"), 1, 0, 1, False, None, threads=1, cpus=2)
    assert run_ours(lambda x: model(x.float()), tiles, fp32)[1].settings["amp"] is None
