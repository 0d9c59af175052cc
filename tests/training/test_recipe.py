"""Recipes: the one home of the training numbers, and the run's config.yaml that reruns it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from loveda_utils.cli import build_parser
from loveda_utils.cli import main as cli
from loveda_utils.cli.train import train_settings
from loveda_utils.errors import ConfigError
from loveda_utils.training.recipe import (
    CONFIG_FILE,
    MMSEG,
    QUICK,
    RECIPE_FIELDS,
    RECIPES,
    Recipe,
    get_recipe,
    read_run_config,
    write_run_config,
)
from loveda_utils.training.task import TASK_FIELDS, SegmentationTask


def test_mmseg_recipe_is_mmsegs_loveda_schedule() -> None:
    """DESIGN.md section 3's reference protocol (MMSeg's LoveDA configs)."""
    assert get_recipe("mmseg") is MMSEG
    assert (MMSEG.optimizer, MMSEG.lr, MMSEG.momentum, MMSEG.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)
    assert (MMSEG.poly_power, MMSEG.min_lr, MMSEG.max_steps) == (0.9, 1e-4, 80_000)
    assert (MMSEG.crop_size, MMSEG.batch_size, MMSEG.aux_weight) == (512, 4, 0.4)  # 4 per GPU
    assert set(RECIPES) == {"mmseg", "quick"} and RECIPES["quick"] is QUICK


def test_unknown_recipe_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="recipe='mmseg_160k': use one of mmseg, quick"):
        get_recipe("mmseg_160k")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizer": "adam"}, "optimizer='adam': use one of sgd, adamw"),
        ({"max_steps": 0}, "max_steps=0: must be a positive integer"),
        ({"batch_size": True}, "batch_size=True: must be a positive integer"),
        ({"crop_size": 64.0}, "crop_size=64.0: must be a positive integer"),
        ({"lr": -1.0}, "lr=-1.0: must be a positive number"),
        ({"weight_decay": -1e-4}, "weight_decay=-0.0001: must be a number >= 0"),
        ({"gradient_clip_val": 0}, "gradient_clip_val=0: use None or a positive number"),
        ({"layer_decay": 1.5}, "layer_decay=1.5: must be in (0, 1]"),
        ({"precision": 16}, "precision=16: use None or a Lightning precision"),
        ({"momentun": 0.9}, "momentun: not a recipe field"),
        ({"fidelity": "exact"}, "fidelity='exact': use one of mmseg, fast"),
    ],
)
def test_bad_recipe_values_name_the_field(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MMSEG.replace(**change)


def test_params_name_a_recipe_and_override_it() -> None:
    recipe = Recipe.from_params({"recipe": "quick", "lr": 0.5, "crop_size": None, "model": "x"})
    assert recipe == QUICK.replace(lr=0.5)  # None keeps the recipe's value; other keys ignored
    assert Recipe.from_params({}) == MMSEG
    assert Recipe.from_params(recipe.to_params()) == recipe
    assert set(recipe.to_params()) == {"recipe", *RECIPE_FIELDS}


def test_the_task_defaults_are_the_mmseg_recipe() -> None:
    defaults = {name: p.default for name, p in inspect.signature(SegmentationTask).parameters.items()}
    assert {name: defaults[name] for name in TASK_FIELDS} == {name: getattr(MMSEG, name) for name in TASK_FIELDS}
    task = SegmentationTask.from_recipe("unet_resnet18", QUICK.replace(pretrained="none", lr=0.25))
    assert task.hparams.lr == 0.25 and task.hparams.optimizer == QUICK.optimizer


def test_run_config_round_trip(tmp_path: Path) -> None:
    recipe = QUICK.replace(crop_size=256, gradient_clip_val=1.5)
    params = {"model": "unet_resnet18", "devices": [0, 1], "data_root": "/data/LoveDA", "seed": 3,
              "limit_eval_images": None, "train_scenes": ["urban"]}
    path = write_run_config(tmp_path, recipe, params, rerun="python -m loveda_utils train --config X")
    assert path == tmp_path / CONFIG_FILE
    text = path.read_text()
    assert text.startswith("# The resolved recipe and parameters of this run. Rerun it with:\n")
    assert "python -m loveda_utils train --config X" in text and "\ncrop_size: 256\n" in text
    assert yaml.safe_load(text) == {**recipe.to_params(), **params}  # flat: a papermill -f file
    again, again_params = read_run_config(tmp_path)  # the folder or the file
    assert again == recipe and again_params == params


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot be read"), ("a: [1, 2", "is not valid YAML"), ("- 1\n- 2\n", "not a mapping")],
)
def test_bad_run_config_names_the_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / CONFIG_FILE
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        read_run_config(path)
    assert str(path) in str(info.value)


def _settings(*argv: str):
    return train_settings(build_parser().parse_args(["train", "--run-dir", "r", *argv]))


def test_train_flags_default_to_the_recipe() -> None:
    recipe, params = _settings("--model", "unet_resnet18")
    assert recipe == MMSEG
    assert params == {"model": "unet_resnet18", "data_root": None, "accelerator": "auto",
                      "devices": "auto", "strategy": "auto", "num_nodes": 1, "num_workers": None,
                      "seed": 0, "allow_cpu": False}
    recipe, params = _settings("--model", "unet_resnet18", "--recipe", "quick", "--lr", "0.5",
                               "--devices", "2", "--precision", "bf16-mixed")
    assert recipe == QUICK.replace(lr=0.5, precision="bf16-mixed") and params["devices"] == 2
    with pytest.raises(ConfigError, match="--model: missing"):
        _settings()


def test_fidelity_is_a_recipe_field_the_training_pipeline_follows(tmp_path: Path) -> None:
    """MMSeg's arithmetic by default; torchvision's faster transforms only when a run asks for
    them (``--fidelity fast``, ``-p fidelity fast``, ``--set fidelity=fast``), and then its
    config.yaml (and the record's ``config``) say so."""
    from conftest import write_tree

    from loveda_utils.benchmark.config import BenchmarkConfig
    from loveda_utils.data.transforms import PhotometricDistortion, RandomRescale
    from loveda_utils.training.trainer import build_datamodule

    assert MMSEG.fidelity == QUICK.fidelity == "mmseg"
    root = write_tree(tmp_path / "loveda", splits=("Train",), n=1, size=64)

    def fidelities(recipe: Recipe) -> set[str]:
        steps = build_datamodule(recipe.replace(crop_size=32), root).train_transform.transforms
        return {t.fidelity for t in steps if isinstance(t, RandomRescale | PhotometricDistortion)}

    assert fidelities(MMSEG) == {"mmseg"}
    assert fidelities(MMSEG.replace(fidelity="fast")) == {"fast"}
    assert _settings("--model", "unet_resnet18", "--fidelity", "fast")[0] == MMSEG.replace(fidelity="fast")
    config = BenchmarkConfig.from_params(dict(model="unet_resnet18", fidelity="fast"))
    assert config.training_recipe.fidelity == "fast" and config.to_dict()["fidelity"] == "fast"
    assert BenchmarkConfig(model="unet_resnet18").to_dict()["fidelity"] == "mmseg"
    written = write_run_config(tmp_path, config.training_recipe, {"model": "unet_resnet18"},
                               rerun="train")  # fmt: skip
    assert read_run_config(written)[0].fidelity == "fast"


def test_train_command_writes_a_config_that_reruns_it(mini_loveda: Path, tmp_path: Path) -> None:
    """``train --run-dir`` writes config.yaml; ``train --config`` from it resolves the same run."""
    first = tmp_path / "first"
    code = cli(["train", "--model", "lraspp_mobilenet_v3_large", "--run-dir", str(first),
                "--data-root", str(mini_loveda), "--recipe", "quick", "--max-steps", "2",
                "--batch-size", "2", "--crop-size", "48", "--num-workers", "0",
                "--accelerator", "cpu"])
    assert code == 0 and (first / "checkpoints" / "last.ckpt").is_file()
    recipe, params = read_run_config(first / CONFIG_FILE)
    assert recipe == QUICK.replace(max_steps=2, batch_size=2, crop_size=48)
    assert params["data_root"] == str(mini_loveda) and params["accelerator"] == "cpu"
    # Rerunning from the file resolves exactly the same recipe and parameters ...
    again = _settings("--config", str(first / CONFIG_FILE))
    assert again == (recipe, params)
    # ... and a flag given on top overrides the file.
    assert _settings("--config", str(first / CONFIG_FILE), "--lr", "0.5")[0] == recipe.replace(lr=0.5)
