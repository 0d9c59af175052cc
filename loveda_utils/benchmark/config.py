"""The parameters of one benchmark run: ``notebooks/03_benchmark.ipynb``'s ``parameters`` cell.

The names are the notebook's. The training numbers (``max_steps``, ``batch_size``,
``crop_size``, ``lr``, ``precision``, ...: every field of
:class:`~loveda_utils.training.recipe.Recipe`) are parameters that default to ``None``, the
named ``recipe``'s, so the notebook, the suite and the ``train`` command share one set of
defaults; they are not declared again here. A built config holds the resolved
:class:`~loveda_utils.training.recipe.Recipe` (``training_recipe``) beside the run's other
parameters, and every run writes both to its folder as ``config.yaml``, which
:func:`read_benchmark_config` turns back into the same config.

A relative ``results_dir`` is made absolute when the config is built, against the working
directory of the process building it: the caller's for ``papermill`` run from a shell (it keeps
the caller's directory unless given ``--cwd``), the notebook's folder in Jupyter. The suite passes
absolute paths (:func:`absolute_paths`), since it runs the notebook in ``notebooks/``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.classes import normalize_scenes, normalize_split
from ..errors import ConfigError, check_int
from ..evaluation.inference import Mode
from ..models.registry import get_spec
from ..models.state_dict import looks_like_path
from ..results.store import check_run_name
from ..training.recipe import (
    CONFIG_FILE,
    DEFAULT_RECIPE,
    RECIPE_FIELDS,
    RECIPE_PARAMETER,
    RECIPES,
    Recipe,
    read_run_config,
    write_run_config,
)

#: The command line written into a notebook run's ``config.yaml`` to rerun it.
RERUN_NOTEBOOK = "papermill notebooks/03_benchmark.ipynb out.ipynb -f {path}"
#: Parameters naming a file or folder (``pretrained`` too, when it is a path, not a keyword).
PATH_PARAMETERS = ("data_root", "results_dir", "checkpoint")


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def absolute_paths(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with its paths made absolute against the current directory, for a notebook
    that runs in another working directory (the suite's, in ``notebooks/``)."""
    out = dict(params)
    for name in PATH_PARAMETERS:
        if isinstance(out.get(name), str) and out[name]:
            out[name] = _absolute(out[name])
    pretrained = out.get("pretrained")
    if isinstance(pretrained, str) and looks_like_path(pretrained):
        out["pretrained"] = _absolute(pretrained)
    return out


def _named(name: str, normalize: Callable[[Any], Any], value: Any) -> None:
    """``normalize(value)``, its ValueError as a ConfigError naming the parameter."""
    try:
        normalize(value)
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from None


@dataclass
class BenchmarkConfig:
    """The parameters of ``03_benchmark.ipynb``: the run's settings, and the resolved recipe.

    Build it from the notebook's flat parameters with :meth:`from_params` (``recipe`` names the
    recipe, each recipe field set to a value overrides it); :meth:`to_dict` gives them back,
    resolved. The default recipe is MMSeg's LoveDA schedule (meant for a GPU); the evaluation
    defaults are MMSeg's protocol: whole tiles of Val plus ms+flip, fps over 195 images after 5
    warm-up ones at 1024 px (their 200-image loop), Mem from a probe training 4 images in fp32.
    """

    model: str = "deeplabv3_resnet101"
    data_root: str | None = None
    train_scenes: str = "both"
    eval_scenes: str = "both"
    eval_split: str = "val"
    checkpoint: str | None = None
    ms_flip: bool = True
    fps_images: int = 195  # timed images, after fps_warmup untimed ones
    limit_eval_images: int | None = None
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    results_dir: str | None = None
    save_predictions: bool = False
    run_name: str | None = None
    # Beyond the contract's names:
    strategy: str = "auto"
    num_nodes: int = 1
    allow_cpu: bool = False  # train a GPU recipe's full schedule on the CPU all the same
    num_workers: int | None = None
    eval_batch_size: int = 1
    eval_mode: Mode = "whole"
    eval_amp: bool = False  # True: evaluate under autocast (the record says so); the table's mIoU is fp32
    slide_window: int = 1024
    slide_stride: int = 768
    fps_size: int | None = 1024  # None: the eval tiles' size
    fps_warmup: int = 5
    flops_size: int = 1024
    mem_steps: int = 3  # training steps of the Mem probe (batch 4, fp32); 0: Mem not measured
    channels_last: bool | None = None  # None: on for CPU and CUDA+AMP inference (faster there)
    visual_tiles: int = 4
    progress: bool = True
    # The parameters `recipe` (its name) and every recipe field, resolved and checked.
    training_recipe: Recipe = RECIPES[DEFAULT_RECIPE]

    def __post_init__(self) -> None:
        get_spec(self.model)  # unknown model -> the list of valid names, before anything runs
        _named("eval_split", normalize_split, self.eval_split)
        _named("train_scenes", normalize_scenes, self.train_scenes)
        _named("eval_scenes", normalize_scenes, self.eval_scenes)
        if self.run_name is not None:
            check_run_name(self.run_name)  # before anything runs, and no folder is made
        if self.results_dir:  # against the caller's directory, before anyone changes it
            self.results_dir = _absolute(self.results_dir)
        for name in ("fps_images", "eval_batch_size"):
            check_int(name, getattr(self, name))
        for name in ("fps_warmup", "mem_steps"):
            check_int(name, getattr(self, name), minimum=0)
        if self.limit_eval_images is not None and self.limit_eval_images < 1:
            raise ConfigError(f"limit_eval_images={self.limit_eval_images}: use None or a positive integer")
        if self.eval_mode not in ("whole", "slide"):
            raise ConfigError(f"eval_mode={self.eval_mode!r}: use 'whole' or 'slide'")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BenchmarkConfig:
        """Build from a dict of notebook variables, ignoring names that are not parameters."""
        get_spec(str(params.get("model", cls.model)))  # the model first: the valid names
        names = set(_run_settings()) & set(params)
        return cls(training_recipe=Recipe.from_params(params), **{k: params[k] for k in names})

    def to_dict(self) -> dict[str, Any]:
        """The notebook's parameters, resolved: the run's settings, ``recipe`` and its fields."""
        return {k: getattr(self, k) for k in _run_settings()} | self.training_recipe.to_params()

    def write(self, run_dir: Path, data_root: Path) -> Path:
        """Write ``<run_dir>/config.yaml``: this config, with the data root it resolved to."""
        path = Path(run_dir) / CONFIG_FILE
        parameters = self.to_dict() | {"data_root": str(data_root)}
        return write_run_config(run_dir, self.training_recipe, parameters,
                                rerun=RERUN_NOTEBOOK.format(path=path))


def _run_settings() -> tuple[str, ...]:
    """The parameters that are :class:`BenchmarkConfig`'s own fields (not the recipe's)."""
    return tuple(f.name for f in dataclasses.fields(BenchmarkConfig) if f.name != "training_recipe")


def parameter_defaults() -> dict[str, Any]:
    """Every parameter of the notebook with its default, in the parameters cell's terms: the
    recipe fields ``None`` (the named recipe's value)."""
    own = {f.name: f.default for f in dataclasses.fields(BenchmarkConfig) if f.name in _run_settings()}
    return own | {RECIPE_PARAMETER: DEFAULT_RECIPE} | dict.fromkeys(RECIPE_FIELDS)


def read_benchmark_config(path: str | Path) -> BenchmarkConfig:
    """The config a run's ``config.yaml`` (or its run folder) holds, ready to run again."""
    recipe, parameters = read_run_config(path)
    return BenchmarkConfig.from_params(parameters | recipe.to_params())
