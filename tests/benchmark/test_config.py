"""The notebook's parameters, the suite's profiles and estimate all take their training numbers
from one recipe; a run's config.yaml gives back the config that made it."""

from __future__ import annotations

import builtins
import dataclasses
from pathlib import Path

import pytest
import torch

from loveda_utils.benchmark.config import (
    BenchmarkConfig,
    parameter_defaults,
    read_benchmark_config,
)
from loveda_utils.benchmark.profiles import PROFILES, Profile
from loveda_utils.benchmark.run import BenchmarkRun
from loveda_utils.benchmark.suite import plan
from loveda_utils.errors import CheckpointError, ConfigError, UnknownModelError
from loveda_utils.training.recipe import MMSEG, QUICK, RECIPE_FIELDS, read_run_config

MODEL = "lraspp_mobilenet_v3_large"


def _recipe_values(config: BenchmarkConfig) -> dict:
    return {name: getattr(config.training_recipe, name) for name in RECIPE_FIELDS}


def test_config_defaults_are_the_mmseg_recipe() -> None:
    config = BenchmarkConfig(model=MODEL)
    assert config.to_dict()["recipe"] == "mmseg" and config.training_recipe == MMSEG
    assert _recipe_values(config) == {name: getattr(MMSEG, name) for name in RECIPE_FIELDS}


def test_to_dict_gives_back_every_notebook_parameter() -> None:
    config = BenchmarkConfig.from_params(dict(model=MODEL, recipe="quick", lr=0.5, seed=3))
    params = config.to_dict()
    assert list(params) == [*(k for k in params if k in parameter_defaults())]
    assert set(params) == set(parameter_defaults())
    assert params["lr"] == 0.5 and params["seed"] == 3 and params["recipe"] == "quick"
    assert BenchmarkConfig.from_params(params) == config  # flat parameters, resolved, round trip
    with pytest.raises(UnknownModelError, match="model='nope' is not in the registry"):
        BenchmarkConfig.from_params(dict(model="nope", recipe="fast"))  # named before the recipe


def test_config_resolves_a_named_recipe_with_overrides() -> None:
    config = BenchmarkConfig.from_params(dict(model=MODEL, recipe="quick", crop_size=64, lr=None))
    assert config.training_recipe == QUICK.replace(crop_size=64)
    assert config.to_dict()["max_steps"] == QUICK.max_steps and config.to_dict()["optimizer"] == "adamw"
    with pytest.raises(ConfigError, match="recipe='fast': use one of mmseg, quick"):
        BenchmarkConfig.from_params(dict(model=MODEL, recipe="fast"))
    with pytest.raises(ConfigError, match="max_steps=0: must be a positive integer"):
        BenchmarkConfig.from_params(dict(model=MODEL, max_steps=0))
    with pytest.raises(ConfigError, match="fps_images=0: must be a positive integer"):
        BenchmarkConfig(model=MODEL, fps_images=0)


def test_config_yaml_round_trip(tmp_path: Path) -> None:
    config = BenchmarkConfig.from_params(dict(model=MODEL, recipe="quick", crop_size=64, ms_flip=False, devices=2))
    path = config.write(tmp_path, data_root=Path("/data/LoveDA"))
    assert "papermill notebooks/03_benchmark.ipynb out.ipynb -f" in path.read_text()
    recipe, params = read_run_config(path)
    assert recipe == config.training_recipe and params["data_root"] == "/data/LoveDA"
    again = read_benchmark_config(tmp_path)
    assert again == dataclasses.replace(config, data_root="/data/LoveDA")


def test_profiles_name_a_recipe_and_the_plan_resolves_it(mini_loveda: Path, tmp_path: Path) -> None:
    assert PROFILES["quick"].recipe == "quick" and PROFILES["mmseg"].recipe == "mmseg"
    assert not set(PROFILES["quick"].params) & set(RECIPE_FIELDS)  # the numbers live in the recipe
    (job,) = plan("quick", ["unet_resnet18"], mini_loveda, tmp_path)
    assert {name: job.params[name] for name in RECIPE_FIELDS} == {name: getattr(QUICK, name) for name in RECIPE_FIELDS}
    assert job.params["recipe"] == "quick"
    assert job.run_group == f"unet_resnet18-mini-{QUICK.crop_size}px-{QUICK.max_steps}it"
    # Per-model overrides and --set still override the recipe.
    (mobile,) = plan("quick", [MODEL], mini_loveda, tmp_path, overrides={"lr": 0.5})
    assert mobile.params["max_steps"] == PROFILES["quick"].models[MODEL]["max_steps"]
    assert mobile.params["lr"] == 0.5
    with pytest.raises(ConfigError, match="recipe='x'"):
        Profile(name="p", description="", models={}, params={}, recipe="x")


def test_force_claims_a_fresh_folder_over_an_unfinished_one(mini_loveda: Path, tmp_path: Path) -> None:
    """The CheckpointError of a damaged last.ckpt says '--force for a fresh folder': it is."""
    (job,) = plan("quick", ["unet_resnet18"], mini_loveda, tmp_path)
    (again,) = plan("quick", ["unet_resnet18"], mini_loveda, tmp_path)
    assert again.run_dir == job.run_dir  # unfinished: resumed
    (forced,) = plan("quick", ["unet_resnet18"], mini_loveda, tmp_path, force=True)
    assert forced.run_dir != job.run_dir and forced.run_dir.name.endswith("-r2")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_the_checkpoint_parameter_never_unpickles_code(mini_loveda: Path, tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": MODEL}, "x": _Payload(marker)}, path)
    config = BenchmarkConfig(model=MODEL, data_root=str(mini_loveda), checkpoint=str(path),
                             results_dir=str(tmp_path / "results"))
    with pytest.raises(CheckpointError, match="refused") as info:
        BenchmarkRun(config).prepare()
    assert not marker.exists() and str(path) in str(info.value)
    assert not (tmp_path / "results").exists()  # refused before a run folder is claimed
