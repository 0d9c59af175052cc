"""``python -m benchmarks.gpu_check``: the GPU check runs, tiny, on the CPU (``--cpu-smoke``) and
prints every row of its table; a failed check is a FAILED row and exit code 1, not a crash."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check
from benchmarks.gpu_check import Row, main, parse_args

REPO = Path(__file__).resolve().parents[2]
#: The quickest registry models on a CPU (the defaults are the GPU's).
MODELS = ("lraspp_mobilenet_v3_large", "segformer_mit_b0")


@pytest.mark.slow
def test_cpu_smoke_prints_every_row(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--cpu-smoke", "--models", *MODELS,
         "--work-dir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    rows = [re.split(r"\s{2,}", ln.strip()) for ln in lines if re.match(r"^(fit|mem|fps|eval|loader) ", ln)]
    found = [(r[0], r[1], r[2]) for r in rows]
    expected = []
    for name in MODELS:
        expected += [("fit", name, "fp32 (32-true)"), ("fit", name, "AMP (bf16-mixed)")]
    expected += [("mem", name, "MMSeg's Mem (batch 4, 32-true)") for name in MODELS]
    for name in MODELS:
        expected += [("fps", name, "MMSeg (fp32, NCHW, cudnn.benchmark off)"),
                     ("fps", name, "ours (fp32, channels-last)")]  # fmt: skip
    expected += [("eval", MODELS[0], "forward ceiling"), ("eval", MODELS[0], "evaluate()")]
    expected += [("loader", "-", "default workers (0)")]
    assert found == expected, done.stdout
    # Every row holds a measured number with its unit, none failed.
    units = {"fit": "steps/s", "mem": "GiB", "fps": "images/s", "eval": "tiles/s", "loader": "samples/s"}
    for row in rows:
        assert re.match(rf"^\d+\.\d+ {units[row[0]]}", row[3]), row
    assert "FAILED" not in done.stdout
    assert f"{len(expected)} rows, 0 failed" in done.stdout
    assert lines[0].startswith("GPU check on CPU")


def test_smoke_sizes_are_defaults_that_flags_override() -> None:
    args = parse_args(["--cpu-smoke", "--steps", "3"])
    assert (args.device, args.size, args.fps_size, args.steps) == ("cpu", 64, 64, 3)
    assert args.allow_cpu
    full = parse_args([])
    assert (full.size, full.batch, full.fps_size, full.fps_images, full.fps_warmup) == (
        512, 4, 1024, 195, 5,
    )  # fmt: skip
    assert not full.allow_cpu


def test_without_a_gpu_the_full_check_says_to_use_the_smoke_mode(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_check, "resolve_device", lambda name: gpu_check.torch.device("cpu"))
    assert main(["--models", MODELS[0]]) == 2
    err = capsys.readouterr().err
    assert "not a GPU" in err and "--cpu-smoke" in err


def test_an_unknown_model_stops_before_any_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cpu-smoke", "--models", "no_such_model"]) == 2
    assert "no_such_model" in capsys.readouterr().err


def test_a_failed_check_is_a_failed_row_and_exit_code_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx):
        raise RuntimeError("CUDA out of memory\nmore lines")

    checks = [
        (("fit", "m", "fp32"), lambda ctx: Row("fit", "m", "fp32", "1.00 steps/s")),
        (("mem", "m", "MMSeg's Mem"), broken),
        (("loader", "-", "default workers"),
         lambda ctx: Row("loader", "-", "default workers (0)", "2.0 samples/s")),
    ]  # fmt: skip
    monkeypatch.setattr(gpu_check, "_row_checks", lambda args: checks)
    assert main(["--cpu-smoke", "--models", MODELS[0]]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^mem\s+m\s+MMSeg's Mem\s+FAILED\s+RuntimeError: CUDA out of memory$", out, re.M)
    assert re.search(r"^loader\s+-\s+default workers \(0\)\s+2.0 samples/s", out, re.M)
    assert "3 rows, 1 failed" in out
