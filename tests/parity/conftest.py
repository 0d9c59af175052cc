"""The reference: MMSegmentation 1.2.2's own code (pins in tests/parity/requirements-mmseg.txt).

``./workbook test`` installs the pins into the project's venv. Without them the parity tests skip
locally with the reason, and fail in CI (``CI=true``), where a skip would hide a broken set-up. The
real LoveDA sample is held to the same rule here: CI has ``shared/`` beside the clone.

mmcv-lite ships no compiled operators, and importing ``mmseg.models`` imports ``mmcv.ops`` (for
heads and losses the LoveDA models do not use). :func:`_stub_mmcv_ops` puts a module in its place
whose every member raises when called or instantiated, so a code path that needed the real ops
would fail loudly instead of running something else.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REAL_SAMPLE
from parity.mmseg_draws import NumpyDraws

REQUIREMENTS = Path(__file__).with_name("requirements-mmseg.txt")
#: MMSeg's LoveDA dataset config, the one its LoveDA rows are trained and tested with.
LOVEDA_CONFIG = "_base_/datasets/loveda.py"
#: mmcv-lite's notice that it has no compiled attention op, and MMSeg's own deprecation notice
#: for the ``reduce_zero_label`` its LoveDA config sets: expected, not findings.
MMSEG_NOTICES = pytest.mark.filterwarnings(
    "ignore:Fail to import ``MultiScaleDeformableAttention``:UserWarning",
    "ignore:`reduce_zero_label` will be deprecated:UserWarning",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """MMSeg's expected notices are filtered for every test of this folder (and only those)."""
    here = Path(__file__).parent
    for item in items:
        if item.path.parent == here:
            item.add_marker(MMSEG_NOTICES)


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the parity tests may not skip)")
    pytest.skip(reason)


class MMCVOpsUnavailable(RuntimeError):
    """A parity test reached a compiled mmcv operator, which mmcv-lite does not have."""


def _stub_mmcv_ops() -> None:
    if "mmcv.ops" in sys.modules:
        return

    def unavailable(name: str) -> type:
        def refuse(*args: Any, **kwargs: Any) -> None:
            raise MMCVOpsUnavailable(f"mmcv.ops.{name} was called; mmcv-lite has no compiled ops")

        return type(name, (), {"__init__": refuse})

    ops = types.ModuleType("mmcv.ops")
    ops.__getattr__ = lambda name: (  # type: ignore[method-assign]
        unavailable(name) if not name.startswith("__") else object.__getattribute__(ops, name)
    )
    sys.modules["mmcv.ops"] = ops
    import mmcv

    mmcv.ops = ops  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Reference:
    """MMSeg's modules and LoveDA configs, as installed."""

    mmseg: types.ModuleType
    cv2: types.ModuleType
    configs: Path

    def config(self, relative: str) -> Any:
        from mmengine.config import Config

        return Config.fromfile(str(self.configs / relative))

    def loveda(self) -> Any:
        """MMSeg's LoveDA dataset config (:data:`LOVEDA_CONFIG`): pipelines and evaluator."""
        return self.config(LOVEDA_CONFIG)

    def build(self, cfg: dict) -> Any:
        """A transform from an MMSeg config dict, through MMSeg's registry (as its runner does)."""
        from mmseg.registry import TRANSFORMS

        return TRANSFORMS.build(cfg)

    def build_metric(self, cfg: dict) -> Any:
        from mmseg.registry import METRICS

        return METRICS.build(cfg)


@pytest.fixture(scope="session")
def mmseg_ref() -> Reference:
    try:
        import cv2
        import mmcv  # noqa: F401
        import mmengine  # noqa: F401

        _stub_mmcv_ops()
        import mmseg
        from mmengine.registry import init_default_scope
        from mmseg.utils import register_all_modules
    except ImportError as error:
        _missing(f"MMSegmentation's reference code is not installed ({error}); "
                 f"./workbook test installs {REQUIREMENTS.name}")
    if mmseg.__version__ != "1.2.2":
        pytest.fail(f"mmseg {mmseg.__version__} is installed; the parity tests pin 1.2.2")
    register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    cv2.setNumThreads(1)
    return Reference(mmseg, cv2, Path(mmseg.__file__).parent / ".mim" / "configs")


@pytest.fixture(scope="session")
def loveda_tiles() -> Path:
    """The real LoveDA sample (Train/Rural); required in CI."""
    if not (REAL_SAMPLE / "Train" / "Rural" / "images_png").is_dir():
        _missing(f"real LoveDA sample not present at {REAL_SAMPLE}")
    return REAL_SAMPLE


@pytest.fixture
def numpy_draws(monkeypatch: pytest.MonkeyPatch):
    """``numpy_draws()`` records; ``numpy_draws([v1, v2, ...])`` scripts MMSeg's draws."""
    return lambda script=None: NumpyDraws(monkeypatch, script)
