"""The registry: its entries, name lookup, tags, and that it imports without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loveda_utils.errors import ConfigError, UnknownModelError
from loveda_utils.models.registry import (
    FAMILIES,
    MODELS,
    TAGS,
    ModelSpec,
    available_models,
    get_spec,
    models_tagged,
)

REPO = Path(__file__).resolve().parents[2]

TORCHVISION_AUX = {
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
}


def test_registry_holds_the_required_models() -> None:
    required = {
        *TORCHVISION_AUX,
        "lraspp_mobilenet_v3_large",
        "unet_resnet18",
        "unet_resnet50",
        "unetplusplus_resnet50",
        "fpn_resnet50",
        "pspnet_resnet101",
        "deeplabv3plus_resnet50",
        "upernet_resnet50",
        "segformer_mit_b2",
        "unet_resnet18_ssl4eo_moco",
        "unet_resnet50_ssl4eo_moco",
        "deeplabv3plus_resnet50_seco",
        "unet_resnet50_gassl",
        "upernet_resnet50_satlas",
    }
    assert required <= set(available_models())
    assert available_models() == list(MODELS)
    for name, spec in MODELS.items():
        assert isinstance(spec, ModelSpec) and spec.name == name and get_spec(name) is spec
        assert spec.family in FAMILIES
        assert spec.method and spec.backbone and spec.notes and "\n" not in spec.notes
        assert spec.default_pretrained == "imagenet" or "_Weights." in spec.default_pretrained
        assert spec.has_aux == (name in TORCHVISION_AUX)
        assert isinstance(spec.tags, frozenset) and spec.tags <= set(TAGS)
    assert get_spec("deeplabv3plus_resnet50").method == "DeepLabV3+"
    assert get_spec("upernet_resnet50_satlas").backbone == "R-50 (SatlasPretrain)"


def test_unknown_model_lists_every_valid_name() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_spec("unet_resnet51")
    message = str(info.value)
    assert isinstance(info.value, KeyError)
    assert "unet_resnet51" in message and "Did you mean 'unet_resnet50'" in message
    assert all(name in message for name in available_models())


def test_models_tagged_reads_the_entries_in_registry_order() -> None:
    assert models_tagged("quick") == [
        "lraspp_mobilenet_v3_large",
        "unet_resnet18",
        "deeplabv3plus_resnet18",
        "segformer_mit_b0",
    ]
    for tag in TAGS:
        tagged = models_tagged(tag)
        assert tagged == [name for name in available_models() if tag in MODELS[name].tags]
    assert models_tagged("mmseg") and "pspnet_resnet50" not in models_tagged("mmseg")
    # The tags that restate a fact of the entry agree with it.
    assert set(models_tagged("eo")) == {
        name for name, spec in MODELS.items() if spec.default_pretrained != "imagenet"
    }
    assert set(models_tagged("light")) == {
        name for name, spec in MODELS.items() if spec.encoder in ("mobilenet_v3_large", "mit_b0")
    }


def test_an_unknown_tag_is_refused_naming_the_valid_tags() -> None:
    with pytest.raises(ConfigError) as info:
        models_tagged("qiuck")
    message = str(info.value)
    assert "'qiuck'" in message
    assert all(repr(tag) in message for tag in TAGS)


def test_a_spec_with_an_unknown_tag_or_family_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'fast'.*quick"):
        ModelSpec("x", "X", "R-18", "smp", "Unet", "resnet18", tags=frozenset({"fast"}))
    with pytest.raises(ValueError, match="family='keras'"):
        ModelSpec("x", "X", "R-18", "keras", "Unet", "resnet18")  # type: ignore[arg-type]


def test_the_registry_imports_without_torch() -> None:
    """The command line and the suite plan from the registry; torch loads only to build."""
    code = (
        "import sys\n"
        "import loveda_utils.models.registry, loveda_utils.models\n"
        "assert 'torch' not in sys.modules, 'the registry imported torch'\n"
        "from loveda_utils.models import build_model, SegmentationModel\n"
        "from loveda_utils.models import wrapper\n"
        "assert build_model is wrapper.build_model\n"
        "assert SegmentationModel is wrapper.SegmentationModel\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
