"""PNG reading: the imagecodecs fast path agrees with Pillow on every kind of file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loveda_utils.data import pngio
from loveda_utils.data.pngio import png_header, read_png
from loveda_utils.errors import InvalidDataError


def _pillow(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _counting_fast_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record which files imagecodecs decoded (the rest went through Pillow)."""
    calls: list[str] = []
    real = pngio.imagecodecs.png_decode

    def spy(data: bytes) -> np.ndarray:
        calls.append("fast")
        return real(data)

    monkeypatch.setattr(pngio.imagecodecs, "png_decode", spy)
    return calls


def test_rgb_and_grey_take_the_fast_path_and_match_pillow(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting_fast_path(monkeypatch)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # odd sizes: no row alignment luck
    grey = rng.integers(0, 8, (37, 53), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "i.png")
    Image.fromarray(grey).save(tmp_path / "m.png")
    Image.fromarray(rgb).save(tmp_path / "interlaced.png", interlace=1)  # Adam7 as well
    image, mask = read_png(tmp_path / "i.png", "image"), read_png(tmp_path / "m.png", "mask")
    assert calls == ["fast", "fast"]
    np.testing.assert_array_equal(image, rgb)
    np.testing.assert_array_equal(mask, grey)
    np.testing.assert_array_equal(read_png(tmp_path / "interlaced.png", "image"), rgb)
    assert image.flags.writeable and mask.flags.writeable  # torch.from_numpy needs it
    assert png_header((tmp_path / "i.png").read_bytes()) == (53, 37, 8, 2)


def test_real_tiles_match_pillow(real_sample: Path) -> None:
    for kind, folder in (("image", "images_png"), ("mask", "masks_png")):
        for path in sorted((real_sample / "Train" / "Rural" / folder).glob("*.png"))[:2]:
            np.testing.assert_array_equal(read_png(path, kind), _pillow(path))


def test_other_formats_go_through_pillow_unchanged(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting_fast_path(monkeypatch)
    raw = rng.integers(0, 8, (20, 30), dtype=np.uint8)
    palette = Image.fromarray(raw, mode="L").convert("P")  # palette mask: indices, not colours
    palette.save(tmp_path / "p.png")
    Image.fromarray(raw.astype(np.uint16) * 300).save(tmp_path / "16bit.png")
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "trns.png", transparency=(0, 0, 0))  # RGB + tRNS
    for name, kind in (("p.png", "mask"), ("16bit.png", "mask"), ("trns.png", "image")):
        np.testing.assert_array_equal(read_png(tmp_path / name, kind), _pillow(tmp_path / name))
    # Only the RGB file with tRNS was tried fast: libpng added alpha, so Pillow read it.
    assert calls == ["fast"]
    assert read_png(tmp_path / "trns.png", "image").shape == (20, 30, 3)


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_image_that_is_not_rgb_is_refused(tmp_path: Path, mode: str) -> None:
    Image.new(mode, (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(InvalidDataError, match=rf"x\.png: image is not 3-channel RGB \(mode {mode}\)"):
        read_png(tmp_path / "x.png", "image")


def test_damaged_and_missing_files_name_the_file(tmp_path: Path, rng: np.random.Generator) -> None:
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"not a png at all" * 4)
    (tmp_path / "header-only.png").write_bytes(data[:33])
    for name in ("truncated.png", "garbage.png", "header-only.png"):
        with pytest.raises(InvalidDataError, match=rf"{name}: unreadable or truncated PNG"):
            read_png(tmp_path / name, "image")
    with pytest.raises(InvalidDataError, match=r"nothing\.png: file missing"):
        read_png(tmp_path / "nothing.png", "mask")
