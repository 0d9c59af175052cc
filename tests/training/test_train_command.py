"""The ``train`` command refuses bad flags with one line naming the flag, exit code 2, before
anything is written (issue #11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loveda_utils.cli import main as cli


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "batch_size=0: must be a positive integer"),
        (["--batch-size", "-2"], "batch_size=-2: must be a positive integer"),
        (["--num-workers", "-1"], "--num-workers -1: must be an integer >= 0"),
        (["--num-nodes", "0"], "--num-nodes 0: must be an integer >= 1"),
        (["--seed", "-1"], "--seed -1: must be an integer 0..4294967295"),
        (["--seed", str(2**32)], "--seed 4294967296: must be an integer 0..4294967295"),
        (["--devices", "0"], "--devices 0: use a positive count, -1 (all)"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(flags: list[str], message: str, tmp_path: Path,
                                            capsys) -> None:
    run_dir = tmp_path / "run"
    code = cli(["train", "--model", "lraspp_mobilenet_v3_large", "--run-dir", str(run_dir),
                "--data-root", str(tmp_path / "no-data"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not run_dir.exists()
