"""Training recipes: the one home of the schedule, optimiser, crop and batch numbers.

A :class:`Recipe` is to a run what an MMSeg config's ``schedule`` + ``optim_wrapper`` +
``train_dataloader`` sections are: every number that shapes training. ``SegmentationTask``, the
notebook's parameters (``loveda_utils/benchmark/config.py``), the ``train`` command's flags and
the suite's profiles take their defaults from a named recipe here, and every run writes the
recipe it resolved to its folder as ``config.yaml`` (:func:`write_run_config`), from which
:func:`read_run_config` gets it back to rerun the row.

* ``mmseg``: MMSeg's LoveDA schedule (``configs/_base_/schedules/schedule_80k.py`` with the
  LoveDA dataset config): SGD lr 0.01, momentum 0.9, weight decay 5e-4, poly decay of power 0.9
  to 1e-4 per iteration over 80k iterations, 512 px crops, 4 images per device and step as
  MMSeg's ``4xb4`` configs (4 GPUs x 4 images: a global batch of 16, with SyncBN), auxiliary FCN
  head weighted 0.4, no warm-up. Meant for GPUs: its full schedule is refused on a CPU unless
  asked for (:meth:`Recipe.refuses_cpu`).
* ``quick``: the CPU demo on the embedded mini-LoveDA: AdamW, 128 px crops, 150 steps, random
  initialisation (nothing may download).

``batch_size`` is per device, as in MMSeg: training on ``devices`` GPUs (and ``num_nodes``
nodes) makes a step's global batch ``batch_size x devices x num_nodes``, and the record holds
both numbers. MMSeg's global batch of 16 is ``devices=4`` with the ``mmseg`` recipe, or
``batch_size=16 / devices`` on fewer GPUs (the learning rate is the recipe's either way).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..data.transforms import FIDELITIES
from ..errors import ConfigError, check_int
from ..files import write_text_atomic
from ..runtime import lightning_precision

OPTIMIZERS = ("sgd", "adamw")
#: The run folder's file holding the resolved recipe and parameters.
CONFIG_FILE = "config.yaml"
#: The parameter that names the recipe (in notebook parameters, ``config.yaml`` and the suite).
RECIPE_PARAMETER = "recipe"


@dataclass(frozen=True)
class Recipe:
    """Every number that shapes training, under a name (see the module docstring).

    Attributes:
        name: the recipe this one was resolved from (a key of :data:`RECIPES`).
        max_steps: training iterations, the length of the poly schedule (the table's Lr schd).
        lr, min_lr, poly_power: poly decay from ``lr`` to ``min_lr`` (MMSeg's ``PolyLR`` with
            ``eta_min``), stepped per iteration; a ``min_lr`` above ``lr`` is clamped to ``lr``.
        optimizer: ``"sgd"`` or ``"adamw"``; ``momentum`` applies to SGD only.
        weight_decay: the optimiser's weight decay (decoupled for AdamW).
        crop_size: side of the square training crop.
        batch_size: training images per step on each device (MMSeg's per-GPU batch).
        precision: Lightning's precision string; ``None``: the runtime policy
            (:func:`loveda_utils.runtime.training_precision`).
        pretrained: initial weights, as :func:`loveda_utils.models.registry.build_model` takes them.
        aux_weight: weight of the auxiliary head's loss (models without one ignore it).
        gradient_clip_val: clip gradients to this norm; ``None``: no clipping.
        fidelity: the training transforms' arithmetic (:mod:`loveda_utils.data.transforms`):
            ``"mmseg"``, mmcv/MMSeg's (checked against their code in ``tests/parity``), or
            ``"fast"``, torchvision's antialiased resize and float photometric steps (faster,
            not MMSeg's; a run's ``config.yaml`` and record say which ran).
        layer_decay: layer-wise learning-rate decay, in (0, 1]; 1 (every recipe's value): one
            learning rate for every parameter. Below 1, MMSeg's
            ``LayerDecayOptimizerConstructor`` rule for the models that have layers (the
            ``torchgeo``-family transformers: block ``i`` of ``L`` gets
            ``lr * layer_decay ** (L + 1 - i)``, biases, norms and tokens no weight decay;
            :meth:`loveda_utils.models.foundation.FoundationUPerNet.param_groups`), e.g. 0.65
            as MMSeg's MAE configs with AdamW; other models refuse it.
    """

    name: str
    max_steps: int
    lr: float
    min_lr: float
    poly_power: float
    optimizer: str
    momentum: float
    weight_decay: float
    crop_size: int
    batch_size: int
    precision: str | None
    pretrained: str
    aux_weight: float
    gradient_clip_val: float | None
    fidelity: str
    layer_decay: float

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        for name in ("max_steps", "crop_size", "batch_size"):
            check_int(name, getattr(self, name))
        for name in ("lr", "poly_power"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be a positive number")
        for name in ("min_lr", "momentum", "weight_decay", "aux_weight"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be a number >= 0")
        if self.gradient_clip_val is not None and (
            not _is_number(self.gradient_clip_val) or self.gradient_clip_val <= 0
        ):
            raise ConfigError(
                f"gradient_clip_val={self.gradient_clip_val!r}: use None or a positive number"
            )
        if self.fidelity not in FIDELITIES:
            raise ConfigError(f"fidelity={self.fidelity!r}: use one of {', '.join(FIDELITIES)}")
        if not _is_number(self.layer_decay) or not 0 < self.layer_decay <= 1:
            raise ConfigError(
                f"layer_decay={self.layer_decay!r}: must be in (0, 1] (1: no layer-wise decay; "
                "MMSeg's MAE configs use 0.65)"
            )
        if self.precision is not None and not isinstance(self.precision, str):
            raise ConfigError(
                f"precision={self.precision!r}: use None or a Lightning precision such as "
                "'32-true', '16-mixed' or 'bf16-mixed'"
            )
        if self.precision is not None:  # checked before a run folder exists; one name each
            object.__setattr__(self, "precision", lightning_precision(self.precision))

    def refuses_cpu(self, steps: int | None = None) -> bool:
        """Whether training ``steps`` (default: the schedule) of this recipe on a CPU needs an
        explicit ``allow_cpu``: a GPU recipe's full schedule (:data:`GPU_RECIPES`), which would
        take weeks there. Shorter runs (a timing probe, a test's few steps) are not refused."""
        steps = self.max_steps if steps is None else steps
        return self.name in GPU_RECIPES and steps >= RECIPES[self.name].max_steps

    def crop_for(self, tile_side: int) -> int:
        """The recipe's crop, or half the tile on tiles smaller than twice it (MMSeg's 512 px
        crops on 1024 px LoveDA tiles keep that ratio on the small mini-LoveDA), at least 16.

        >>> MMSEG.crop_for(1024), MMSEG.crop_for(256)
        (512, 128)
        """
        return max(16, min(self.crop_size, tile_side // 2))

    def replace(self, **changes: Any) -> Recipe:
        """This recipe with some fields changed (validated like a new one)."""
        unknown = sorted(set(changes) - {"name", *RECIPE_FIELDS})
        if unknown:
            raise ConfigError(
                f"{', '.join(unknown)}: not a recipe field; use {', '.join(RECIPE_FIELDS)}"
            )
        return dataclasses.replace(self, **changes)

    def to_params(self) -> dict[str, Any]:
        """The recipe as run parameters: ``recipe`` (its name) and every field."""
        values = dataclasses.asdict(self)
        return {RECIPE_PARAMETER: values.pop("name"), **values}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Recipe:
        """The recipe ``params`` name (``recipe``, default ``mmseg``) with the recipe fields that
        ``params`` sets to a value (``None`` keeps the recipe's) replaced; other keys are ignored."""
        base = get_recipe(params.get(RECIPE_PARAMETER) or DEFAULT_RECIPE)
        changes = {k: params[k] for k in RECIPE_FIELDS if params.get(k) is not None}
        return base.replace(**changes)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: The field names a recipe sets (its ``name`` aside): run parameters under these names override it.
RECIPE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "name")

MMSEG = Recipe(
    name="mmseg",
    max_steps=80_000,
    lr=0.01,
    min_lr=1e-4,
    poly_power=0.9,
    optimizer="sgd",
    momentum=0.9,
    weight_decay=5e-4,
    crop_size=512,
    batch_size=4,  # per device: MMSeg's 4xb4 is 4 GPUs x 4 images
    precision=None,
    pretrained="default",
    aux_weight=0.4,
    gradient_clip_val=None,
    fidelity="mmseg",
    layer_decay=1.0,
)

QUICK = MMSEG.replace(
    name="quick",
    max_steps=150,
    lr=1e-3,
    optimizer="adamw",
    weight_decay=1e-4,
    crop_size=128,
    batch_size=8,
    pretrained="none",  # nothing may download; cached weights can be asked for by overriding it
)

#: GPUs of MMSeg's LoveDA configs (``4xb4``): with :data:`MMSEG`'s ``batch_size`` on each, a step
#: of 16 images, which one device matches with ``batch_size=16`` or ``devices=4``.
MMSEG_GPUS = 4

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (MMSEG, QUICK)}
DEFAULT_RECIPE = MMSEG.name
#: Recipes written for GPUs: their full schedule on a CPU needs ``allow_cpu`` (a silent CPU
#: fallback, e.g. a driver too old for the installed CUDA build, would otherwise run for weeks).
GPU_RECIPES: frozenset[str] = frozenset({MMSEG.name})


#: The longest stretch of iterations a run trains without writing ``last.ckpt`` (the ``mmseg``
#: schedule's 80k iterations: 80 checkpoints).
CHECKPOINT_EVERY = 1000
#: Checkpoints per schedule at least, so a short run (``quick``: 150 iterations) interrupted
#: half-way resumes from its middle instead of step 0.
CHECKPOINTS_PER_SCHEDULE = 10


def checkpoint_interval(max_steps: int) -> int:
    """Iterations between two ``last.ckpt`` writes in a schedule of ``max_steps``: at most
    :data:`CHECKPOINT_EVERY`, and :data:`CHECKPOINTS_PER_SCHEDULE` of them per schedule (every
    step for a schedule shorter than that). The Trainer also writes one at the last step.

    >>> checkpoint_interval(80_000), checkpoint_interval(150), checkpoint_interval(6)
    (1000, 15, 1)
    """
    check_int("max_steps", max_steps)
    return max(1, min(CHECKPOINT_EVERY, max_steps // CHECKPOINTS_PER_SCHEDULE))


def get_recipe(name: str) -> Recipe:
    """The named recipe; an unknown name is refused with the valid ones."""
    if name not in RECIPES:
        raise ConfigError(f"recipe={name!r}: use one of {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_field_types() -> dict[str, type]:
    """Each recipe field's value type (``str | None`` -> ``str``), for command-line flags."""
    hints = typing.get_type_hints(Recipe)
    out = {}
    for name in RECIPE_FIELDS:
        kind = hints[name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        out[name] = args[0] if args else kind
    return out


# -- config.yaml ----------------------------------------------------------------------------------


def write_run_config(
    run_dir: str | Path, recipe: Recipe, parameters: Mapping[str, Any], rerun: str
) -> Path:
    """Write ``<run_dir>/config.yaml``: the resolved recipe, then the run's other parameters.

    One flat mapping of parameter names (as MMSeg's dumped configs are one file per run), so
    that the file is both readable and a papermill parameters file (``-f config.yaml``).
    ``rerun`` is the command line that reruns the row, written as the file's first comment.
    """
    recipe_params = recipe.to_params()
    rest = {k: v for k, v in parameters.items() if k not in recipe_params}
    text = (
        f"# The resolved recipe and parameters of this run. Rerun it with:\n#   {rerun}\n"
        f"# Recipe {recipe.name!r} of loveda_utils/training/recipe.py, with this run's overrides:\n"
        + yaml.safe_dump(recipe_params, sort_keys=False)
        + "# Run parameters:\n"
        + yaml.safe_dump(rest, sort_keys=False)
    )
    return write_text_atomic(Path(run_dir) / CONFIG_FILE, text)


def read_run_config(path: str | Path) -> tuple[Recipe, dict[str, Any]]:
    """The recipe and the other parameters of a ``config.yaml`` (or a run folder holding one).

    Raises:
        ConfigError: naming the file when it is missing, not YAML, or not a mapping of names.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot be read ({exc.strerror}); pass a run's {CONFIG_FILE}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML ({exc}); pass a run's {CONFIG_FILE}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"config {path} is not a mapping of parameter names; pass a run's {CONFIG_FILE}")
    recipe = Recipe.from_params(data)
    parameters = {k: v for k, v in data.items() if k != RECIPE_PARAMETER and k not in RECIPE_FIELDS}
    return recipe, parameters
