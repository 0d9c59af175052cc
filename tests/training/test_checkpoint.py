"""Checkpoints are read with ``weights_only=True`` (issue #11): a pickle that would run code is
refused before it runs, a damaged file says which one it is and what to do."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest
import torch

from loveda_utils.cli import main as cli
from loveda_utils.errors import CheckpointError
from loveda_utils.training.checkpoint import load_checkpoint, read_checkpoint
from loveda_utils.training.recipe import QUICK
from loveda_utils.training.segments import SEGMENTS_KEY
from loveda_utils.training.trainer import build_datamodule, fit

MODEL = "lraspp_mobilenet_v3_large"
RECIPE = QUICK.replace(max_steps=2, batch_size=2, crop_size=48)


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _malicious(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": MODEL}, "x": _Payload(marker)}, path)
    return path, marker


def test_the_payload_is_real(tmp_path: Path) -> None:
    """The unrestricted unpickler does run it: the test below would catch an unsafe load."""
    path, marker = _malicious(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path: Path) -> None:
    path, marker = _malicious(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert not marker.exists()
    assert str(path) in message and "_io.open" in message and "refused" in message
    assert "weights_only" not in message  # never advises the unsafe load
    assert info.value.__cause__ is None and info.value.__suppress_context__  # nor does the traceback


@pytest.fixture(scope="module")
def trained(mini_loveda: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    fit(RECIPE, build_datamodule(RECIPE, mini_loveda, num_workers=0), run_dir, model=MODEL, progress=False)
    return run_dir / "checkpoints" / "last.ckpt"


def _damaged(kind: str, good: Path, folder: Path) -> Path:
    path = folder / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2] if kind == "truncated" else os.urandom(4096))
    return path


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_a_damaged_checkpoint_names_the_file(trained: Path, tmp_path: Path, kind: str) -> None:
    path = _damaged(kind, trained, tmp_path)
    with pytest.raises(CheckpointError, match="is unreadable or corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "weights_only" not in str(info.value)


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_a_damaged_last_ckpt_stops_the_resume_with_what_to_do(
    trained: Path, tmp_path: Path, mini_loveda: Path, kind: str
) -> None:
    path = _damaged(kind, trained, tmp_path)
    with pytest.raises(CheckpointError) as info:
        fit(RECIPE, build_datamodule(RECIPE, mini_loveda, num_workers=0), tmp_path, model=MODEL,
            progress=False)
    message = str(info.value)
    assert str(path) in message and "move it aside" in message and "--force" in message


def test_our_checkpoints_need_nothing_beyond_weights_only(trained: Path) -> None:
    data = read_checkpoint(trained)
    assert data["global_step"] == 2 and data["datamodule_hyper_parameters"]["crop_size"] == 48
    loaded = load_checkpoint(trained)
    assert (loaded.global_step, loaded.crop_size, loaded.batch_size) == (2, 48, 2)
    assert loaded.task.hparams.model == MODEL and loaded.task.model.pretrained == "none"


def test_other_objects_and_non_dicts_are_refused(tmp_path: Path) -> None:
    with_path = tmp_path / "path.ckpt"
    torch.save({"state_dict": {}, "root": Path("/data")}, with_path)
    with pytest.raises(CheckpointError, match=r"pathlib\.\w*Path"):
        read_checkpoint(with_path)
    tensor = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a checkpoint dict"):
        read_checkpoint(tensor)


def _train_args(root: Path, run_dir: Path) -> list[str]:
    return ["train", "--model", MODEL, "--run-dir", str(run_dir), "--data-root", str(root),
            "--recipe", "quick", "--max-steps", "2", "--batch-size", "2", "--crop-size", "48",
            "--num-workers", "0", "--accelerator", "cpu"]


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_train_with_a_damaged_last_ckpt_says_what_to_do_and_moving_it_aside_restarts(
    trained: Path, tmp_path: Path, mini_loveda: Path, kind: str, capsys
) -> None:
    path = _damaged(kind, trained, tmp_path)
    damaged = path.read_bytes()
    assert cli(_train_args(mini_loveda, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "move it aside" in err
    assert path.read_bytes() == damaged  # left as it was
    # The remedy the message gives works: moved aside, the run trains from step 0.
    aside = path.rename(tmp_path / "damaged.ckpt")
    assert cli(_train_args(mini_loveda, tmp_path)) == 0
    data = read_checkpoint(path)
    assert data["global_step"] == 2 and [s["start_step"] for s in data[SEGMENTS_KEY]] == [0]
    assert aside.read_bytes() == damaged
