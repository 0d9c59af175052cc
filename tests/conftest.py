"""Shared fixtures: small LoveDA trees written as real PNG files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

# Tests never touch the network and never open windows. (Only this process gets Agg: an
# MPLBACKEND variable would also reach papermill's kernels and hide their inline figures.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]
#: The 16 real LoveDA tiles beside the repository (never copied into it).
REAL_SAMPLE = Path(os.environ.get("LOVEDA_SAMPLE", REPO.parent / "shared" / "loveda_sample"))

#: A colour per raw value so images are a function of their masks (0 = no-data is black).
RAW_COLOURS = np.array(
    [[0, 0, 0], [200, 200, 200], [220, 40, 40], [240, 240, 60], [30, 60, 220],
     [150, 120, 180], [30, 160, 40], [230, 190, 120]], dtype=np.uint8)


def write_pair(folder: Path, name: str, raw_mask: np.ndarray, with_mask: bool = True) -> None:
    """Write ``images_png/<name>`` (colours of the mask) and ``masks_png/<name>``."""
    (folder / "images_png").mkdir(parents=True, exist_ok=True)
    Image.fromarray(RAW_COLOURS[raw_mask]).save(folder / "images_png" / name)
    if with_mask:
        (folder / "masks_png").mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw_mask.astype(np.uint8)).save(folder / "masks_png" / name)


def random_raw_mask(rng: np.random.Generator, size: int, block: int = 8) -> np.ndarray:
    """Blocky raw mask with every value 0..7 likely present."""
    small = rng.integers(0, 8, size=(size // block + 1, size // block + 1), dtype=np.uint8)
    return np.kron(small, np.ones((block, block), dtype=np.uint8))[:size, :size]


def write_tree(
    root: Path,
    splits: Sequence[str] = ("Train", "Val", "Test"),
    scenes: Sequence[str] = ("Urban", "Rural"),
    n: int = 2,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """A LoveDA-layout tree of random blocky tiles; ids unique across the tree."""
    rng = np.random.default_rng(seed)
    next_id = 0
    for split in splits:
        for scene in scenes:
            for _ in range(n):
                write_pair(root / split / scene, f"{next_id}.png", random_raw_mask(rng, size),
                           with_mask=split != "Test")
                next_id += 1
    return root


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "loveda")


@pytest.fixture(scope="session")
def mini_loveda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated mini-LoveDA (the embedded default, at test size)."""
    from loveda_utils.data.synthetic import generate_mini_loveda

    return generate_mini_loveda(tmp_path_factory.mktemp("mini") / "mini-loveda", tiles=4, size=96, seed=0)


@pytest.fixture
def real_sample() -> Path:
    if not (REAL_SAMPLE / "Train" / "Rural" / "images_png").is_dir():
        pytest.skip(f"real LoveDA sample not present at {REAL_SAMPLE}")
    return REAL_SAMPLE


@pytest.fixture(autouse=True)
def _no_user_loveda_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not pick up a developer's $LOVEDA_ROOT."""
    monkeypatch.delenv("LOVEDA_ROOT", raising=False)
