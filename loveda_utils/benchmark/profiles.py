"""The suite's profiles: which models run, with which recipe and notebook parameters.

A profile is a training recipe (``loveda_utils/training/recipe.py``), the notebook parameters
its models share, and the models with their own overrides:

* ``quick``: the CPU demo on the embedded mini-LoveDA: the ``quick`` recipe (small crops, a short
  schedule, random initialisation since nothing may download) over small models. Meant to finish
  within 15 minutes on 2 cores and still give a readable table. With real LoveDA
  (``$LOVEDA_ROOT`` or ``--data-root``) it evaluates a fixed subset of Val so that it stays a demo.
* ``mmseg``: MMSeg's LoveDA protocol for a GPU: the ``mmseg`` recipe, ms+flip, fps over 200
  images at 1024 px, over the torchvision, smp and EO-pretrained models.
* ``cross-domain``: LoveDA's cross-domain benchmark as source-only baselines, for a GPU: each
  model trained with the ``mmseg`` recipe on the Train split of one domain (Urban, then Rural)
  and evaluated on the Val split of both, which the 2x2 table of
  ``loveda_utils/results/cross_domain.py`` reads back from the records.

Each profile names the results folder it writes to unless told otherwise (``results_dir``):
``quick`` writes to the git-ignored demo folder, the others to the project's published folders
(``loveda_utils/paths.py``), where no run on the synthetic mini-LoveDA may go.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import paths
from ..data.synthetic import is_synthetic
from ..errors import ConfigError
from ..models.registry import models_tagged
from ..results.store import check_output_folder
from ..training.recipe import DEFAULT_RECIPE, RECIPE_PARAMETER, get_recipe

__all__ = ["PROFILES", "Profile", "get_profile", "results_dir_for"]


@dataclass(frozen=True)
class Profile:
    """A named set of models, the recipe they train with and the notebook parameters they share.

    ``models`` maps each model to its own parameter overrides (usually none).
    ``real_data_params`` are applied on top of ``params`` when the data is real LoveDA.
    ``variants``: each model runs once per variant, with the variant's parameters on top (the
    cross-domain profile's train scenes); one empty variant by default: one run per model.
    ``results_dir``: the folder its runs, table and rendered comparison go to unless the caller
    names another (:func:`results_dir_for`).
    """

    name: str
    description: str
    models: Mapping[str, Mapping[str, Any]]
    params: Mapping[str, Any]
    real_data_params: Mapping[str, Any] = field(default_factory=dict)
    recipe: str = DEFAULT_RECIPE
    variants: tuple[Mapping[str, Any], ...] = ({},)
    results_dir: Path = paths.RESULTS_DIR

    def __post_init__(self) -> None:
        get_recipe(self.recipe)  # an unknown recipe fails when the profile is made
        if not self.variants:
            raise ValueError(f"profile {self.name!r}: variants is empty; use ({{}},) for one run per model")

    def params_for(
        self, model: str, synthetic: bool, variant: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The notebook parameters of ``model`` (in ``variant``): the recipe's name, then the
        shared parameters, the real-data ones, the variant's and the model's own overrides
        (recipe fields among them override the recipe's numbers)."""
        out = {RECIPE_PARAMETER: self.recipe, **self.params}
        if not synthetic:
            out.update(self.real_data_params)
        out.update(variant or {})
        out.update(self.models.get(model, {}))
        return out


def _tagged(tag: str, **overrides: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The registry models tagged ``tag`` (its members), each with its parameter overrides."""
    members = models_tagged(tag)
    if stray := sorted(set(overrides) - set(members)):
        raise ValueError(f"overrides for {stray}, which do not carry the registry tag {tag!r}")
    return {name: overrides.get(name, {}) for name in members}


#: MMSeg's evaluation protocol on a GPU (README, "The protocol"), shared by the GPU profiles.
_MMSEG_PARAMS: dict[str, Any] = {
    "ms_flip": True,
    "fps_images": 195,  # MMSeg: 200 images, the first 5 untimed
    "fps_size": 1024,
    "flops_size": 1024,
    "save_predictions": True,
    "progress": True,
}

#: A profile's models are the registry models carrying the tag of the profile's name.
PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        description="CPU demo on the embedded mini-LoveDA: small models, short schedule",
        models=_tagged(
            "quick",
            # torchvision's MobileNetV3 uses BatchNorm momentum 0.01, so its running statistics
            # lag on short schedules (after 150 steps: 5.6% mIoU in eval mode against 34% with
            # batch statistics). It is also the fastest model here, so it gets a longer schedule;
            # it still trails at 400 steps (see the README's notes).
            lraspp_mobilenet_v3_large={"max_steps": 400},
        ),
        recipe="quick",
        params={
            "ms_flip": True,
            "fps_images": 20,
            "fps_size": None,  # the eval tiles' size
            "flops_size": 1024,
            "visual_tiles": 4,
            "save_predictions": False,
            "progress": False,
        },
        real_data_params={"limit_eval_images": 16, "crop_size": 256},
        # Even on real LoveDA the quick profile is a demo (a short schedule, a Val subset): its
        # runs are local output, never the project's results.
        results_dir=paths.DEMO_RESULTS_DIR,
    ),
    "mmseg": Profile(
        name="mmseg",
        description="MMSeg's LoveDA protocol on real LoveDA, for a GPU",
        models=_tagged("mmseg"),
        recipe="mmseg",
        params=_MMSEG_PARAMS,
        results_dir=paths.RESULTS_DIR,
    ),
    "cross-domain": Profile(
        name="cross-domain",
        description="source-only cross-domain baselines: trained on Urban or Rural Train, "
                    "evaluated on the Val of both (MMSeg's schedule, for a GPU)",
        models=_tagged("cross-domain"),
        recipe="mmseg",
        # Single-scale scores, as LoveDA's cross-domain benchmark reports; no predictions kept.
        params={**_MMSEG_PARAMS, "ms_flip": False, "save_predictions": False,
                "eval_split": "val", "eval_scenes": "both"},
        variants=({"train_scenes": "urban"}, {"train_scenes": "rural"}),
        results_dir=paths.CROSS_DOMAIN_RESULTS_DIR,
    ),
}


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ConfigError(f"profile={profile!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def results_dir_for(profile: str | Profile, results_dir: str | Path | None, root: Path) -> Path:
    """The folder a suite on ``root`` writes to: ``results_dir``, else the profile's.

    Raises:
        ConfigError: when ``root`` is the synthetic mini-LoveDA and the folder is one of the
            project's published results folders (:data:`loveda_utils.paths.PUBLISHED_RESULTS_DIRS`):
            synthetic numbers never sit beside LoveDA results.
    """
    prof = get_profile(profile)
    # Only None means the profile's: an empty path is refused, never read as the default.
    folder = prof.results_dir if results_dir is None else check_output_folder(results_dir, "results_dir")
    published = {p.resolve() for p in paths.PUBLISHED_RESULTS_DIRS}
    if is_synthetic(root) and folder.resolve() in published:
        raise ConfigError(
            f"results_dir={str(folder)!r} holds the project's published LoveDA runs, and "
            f"{root} is the synthetic mini-LoveDA: set ${paths.ENV_VAR} (or --data-root) to a "
            f"LoveDA root, or pass --results-dir elsewhere (e.g. {paths.DEMO_RESULTS_DIR})"
        )
    return folder
