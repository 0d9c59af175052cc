"""The suite's profiles take their models from the registry's tags, not from lists of names."""

from __future__ import annotations

import pytest

from loveda_utils.benchmark.profiles import PROFILES, _tagged
from loveda_utils.errors import ConfigError
from loveda_utils.models.registry import TAGS, models_tagged
from loveda_utils.training.recipe import get_recipe


@pytest.mark.parametrize("name", list(PROFILES))
def test_a_profile_runs_exactly_the_models_carrying_its_tag(name: str) -> None:
    assert name in TAGS
    assert list(PROFILES[name].models) == models_tagged(name)


def test_per_model_overrides_survive() -> None:
    quick = PROFILES["quick"]
    assert quick.params_for("lraspp_mobilenet_v3_large", synthetic=True)["max_steps"] == 400
    # Models without an override train for the recipe's schedule (the parameter stays unset).
    assert "max_steps" not in quick.params_for("unet_resnet18", synthetic=True)
    assert get_recipe(quick.recipe).max_steps != 400


def test_overrides_for_an_untagged_model_or_an_unknown_tag_are_refused() -> None:
    with pytest.raises(ValueError, match="fcn_resnet50"):
        _tagged("quick", fcn_resnet50={"max_steps": 1})
    with pytest.raises(ConfigError, match="'mmseg'"):
        _tagged("mmsegg")
