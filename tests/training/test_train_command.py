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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--precision", "foo"], "precision='foo': use None (the AMP policy) or one of Lightning's "
                                 "precisions: transformer-engine"),
        (["--accelerator", "foo"], "accelerator='foo'"),
        (["--accelerator", "foo"], "Lightning refuses them: You selected an invalid accelerator name"),
        (["--devices", "abc"], "devices='abc'"),
        (["--strategy", "foo"], "You selected an invalid strategy name: `strategy='foo'`"),
    ],
)  # fmt: skip
def test_settings_lightning_refuses_are_one_line_before_the_run_dir_exists(
    flags: list[str], message: str, mini_loveda: Path, tmp_path: Path, capsys
) -> None:
    """They were raw tracebacks from Lightning's Trainer, after the run folder was claimed and
    its config.yaml written."""
    run_dir = tmp_path / "run"
    code = cli(["train", "--model", "lraspp_mobilenet_v3_large", "--run-dir", str(run_dir),
                "--data-root", str(mini_loveda), "--pretrained", "none", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not run_dir.exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "unet_resnet9000"], "model='unet_resnet9000' is not in the registry"),
    (["--model", "lraspp_mobilenet_v3_large", "--data-root", "{tmp}/no-data"], "is not a folder"),
])  # fmt: skip
def test_a_bad_model_or_data_root_writes_no_run_dir(argv: list[str], message: str, mini_loveda: Path,
                                                    tmp_path: Path, capsys) -> None:
    """The folder was claimed (and its config.yaml written) before either was checked."""
    run_dir = tmp_path / "run"
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--data-root" not in argv:
        argv += ["--data-root", str(mini_loveda)]
    assert cli(["train", "--run-dir", str(run_dir), "--pretrained", "none", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not run_dir.exists()


def test_a_precision_alias_is_stored_under_lightnings_name() -> None:
    """"16" trained in fp16 while the pre-flight's memory estimate read it as fp32."""
    from loveda_utils.runtime import precision_dtype
    from loveda_utils.training.recipe import QUICK

    recipe = QUICK.replace(precision="16")
    assert recipe.precision == "16-mixed" and precision_dtype(recipe.precision) is not None
    assert QUICK.replace(precision="bf16").precision == "bf16-mixed"
