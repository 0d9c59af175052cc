"""MMSeg's random draws, recorded or scripted, and replayed through our transforms.

MMSeg and mmcv draw from ``numpy.random`` (``np.random.randint`` / ``uniform`` /
``random_sample`` / ``choice``, looked up on the module at call time); our transforms draw from
torch through small methods (``sample_ratio``, ``sample_box``, ``make_params``). A parity test
runs MMSeg first with :class:`NumpyDraws` recording, then :func:`replay` makes our steps use
exactly those values, or scripts MMSeg's draws from our parameters with
:func:`photometric_script`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from torchvision.transforms import v2

from loveda_utils.data.transforms import PhotometricDistortion, RandomCropCatMax, RandomRescale


class NumpyDraws:
    """Records every ``numpy.random`` draw MMSeg makes, or plays scripted values back."""

    NAMES = ("randint", "uniform", "random_sample", "choice", "rand")

    def __init__(self, monkeypatch: pytest.MonkeyPatch, script: list[Any] | None = None) -> None:
        self.calls: list[tuple[str, tuple, Any]] = []
        self.script = list(script) if script is not None else None
        for name in self.NAMES:
            monkeypatch.setattr(np.random, name, self._wrap(name, getattr(np.random, name)))

    def _wrap(self, name: str, real: Any) -> Any:
        def draw(*args: Any, **kwargs: Any) -> Any:
            if self.script is not None:
                if not self.script:
                    raise AssertionError(f"MMSeg drew np.random.{name}{args} beyond the script")
                value = self.script.pop(0)
            else:
                value = real(*args, **kwargs)
            self.calls.append((name, args, value))
            return value

        return draw

    def take(self, name: str) -> Any:
        """The next recorded draw, which must come from ``name``."""
        assert self.calls, f"MMSeg drew nothing more; expected np.random.{name}"
        call, args, value = self.calls.pop(0)
        assert call == name, f"expected np.random.{name}, MMSeg drew np.random.{call}{args}"
        return value

    def next_is(self, name: str) -> bool:
        return bool(self.calls) and self.calls[0][0] == name


def photometric_params(draws: NumpyDraws) -> dict[str, Any]:
    """Our parameters from MMSeg's ``PhotoMetricDistortion`` draws, in its order.

    brightness coin [delta], mode, (mode 1: contrast coin [alpha]), saturation coin [alpha],
    hue coin [delta], (mode 0: contrast coin [alpha]).
    """
    brightness = draws.take("uniform") if draws.take("randint") else None
    contrast_first = draws.take("randint") == 1
    contrast = None
    if contrast_first and draws.take("randint"):
        contrast = draws.take("uniform")
    saturation = draws.take("uniform") if draws.take("randint") else None
    hue = int(draws.take("randint")) if draws.take("randint") else None
    if not contrast_first and draws.take("randint"):
        contrast = draws.take("uniform")
    return {"brightness": brightness, "contrast_first": contrast_first, "contrast": contrast,
            "saturation": saturation, "hue": hue}


def photometric_script(params: dict[str, Any]) -> list[Any]:
    """MMSeg's ``PhotoMetricDistortion`` draws that give our ``params`` (the inverse of the above)."""

    def maybe(value: Any) -> list[Any]:
        return [0] if value is None else [1, value]

    mode = 1 if params["contrast_first"] else 0
    script = maybe(params["brightness"]) + [mode]
    if mode == 1:
        script += maybe(params["contrast"])
    script += maybe(params["saturation"]) + maybe(params["hue"])
    if mode == 0:
        script += maybe(params["contrast"])
    return script


def replay(pipeline: v2.Compose, draws: NumpyDraws) -> v2.Compose:
    """Make each random step of our training ``pipeline`` use MMSeg's recorded ``draws``.

    Steps come in MMSeg's order (rescale, crop, flip, photometric), as do the draws.
    """
    for step in pipeline.transforms:
        if isinstance(step, RandomRescale):
            lo, hi = step.ratio_range
            ratio = draws.take("random_sample") * (hi - lo) + lo  # mmcv's _random_sample_ratio
            step.sample_ratio = lambda ratio=ratio: ratio  # type: ignore[method-assign]
        elif isinstance(step, RandomCropCatMax):
            offsets = []
            while draws.next_is("randint"):
                offsets.append((int(draws.take("randint")), int(draws.take("randint"))))

            def box(h: int, w: int, offsets=offsets, size=step.size) -> tuple[int, int, int, int]:
                assert offsets, "our crop drew more windows than MMSeg's RandomCrop"
                top, left = offsets.pop(0)
                return top, left, min(size, h), min(size, w)

            step.sample_box = box  # type: ignore[method-assign]
            step.unused_offsets = offsets  # checked by the caller: MMSeg drew no more than we did
        elif isinstance(step, v2.RandomHorizontalFlip):
            step.p = 1.0 if draws.take("choice") == "horizontal" else 0.0
        elif isinstance(step, PhotometricDistortion):
            params = photometric_params(draws)
            step.make_params = lambda flat, params=params: params  # type: ignore[method-assign]
    assert not draws.calls, f"MMSeg made draws our pipeline has no step for: {draws.calls}"
    return pipeline
