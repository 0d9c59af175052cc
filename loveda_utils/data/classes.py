"""The LoveDA label convention: the one place for class names, palette and encodings.

On disk (the released archive, torchgeo's ``LoveDA``) masks hold raw values
``0 = no-data`` and ``1..7`` for the seven land-cover classes. Inside this package
the classes are ``0..6`` (raw - 1) and no-data is :data:`IGNORE_INDEX`, which every
loss and metric ignores. Beware: torchgeo's ``LoveDA.classes`` lists ``no-data``
*last*, while its masks store it as 0; use the names here, not theirs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: Training class names, index = training label (raw value - 1).
CLASS_NAMES: tuple[str, ...] = (
    "background",
    "building",
    "road",
    "water",
    "barren",
    "forest",
    "agriculture",
)
NUM_CLASSES: int = len(CLASS_NAMES)

#: Label for no-data pixels inside the package (raw value 0).
IGNORE_INDEX: int = 255
#: Raw mask value of no-data on disk.
RAW_NODATA: int = 0
#: Highest valid raw mask value on disk (7 = agriculture).
MAX_RAW_VALUE: int = NUM_CLASSES

#: RGB colour per training class: MMSeg's LoveDA palette, so visuals match their model zoo.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),  # background
    (255, 0, 0),  # building
    (255, 255, 0),  # road
    (0, 0, 255),  # water
    (159, 129, 183),  # barren
    (0, 255, 0),  # forest
    (255, 195, 128),  # agriculture
)
#: Colour drawn for ignored (no-data) pixels.
IGNORE_COLOR: tuple[int, int, int] = (0, 0, 0)

#: Folder names of the released archive.
SPLITS: tuple[str, ...] = ("Train", "Val", "Test")
SCENES: tuple[str, ...] = ("Urban", "Rural")
#: Splits that ship masks (the Test masks are held by the evaluation server).
SPLITS_WITH_MASKS: tuple[str, ...] = ("Train", "Val")

#: Lookup table raw value -> training label, for all 256 uint8 values. Values above 7 are
#: invalid on disk (``check-data`` reports them); mapping them to ignore keeps a bad pixel
#: from ever becoming a wrong label.
_RAW_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_RAW_TO_TRAIN[1 : NUM_CLASSES + 1] = np.arange(NUM_CLASSES, dtype=np.uint8)


def normalize_split(split: str) -> str:
    """Return the archive's folder name for ``split`` (``"val"`` -> ``"Val"``)."""
    for name in SPLITS:
        if split.lower() == name.lower():
            return name
    raise ValueError(f"split={split!r} is not one of {', '.join(SPLITS)} (case-insensitive)")


def normalize_scenes(scenes: str | Sequence[str]) -> tuple[str, ...]:
    """Return archive scene names for ``"urban"``, ``"rural"``, ``"both"`` or a list of them."""
    if isinstance(scenes, str):
        scenes = list(SCENES) if scenes.lower() in ("both", "all") else [scenes]
    out = []
    for scene in scenes:
        match = [name for name in SCENES if name.lower() == str(scene).lower()]
        if not match:
            raise ValueError(
                f"scene {scene!r} is not one of {', '.join(SCENES)} or 'both' (case-insensitive)"
            )
        if match[0] not in out:
            out.append(match[0])
    if not out:
        raise ValueError("scenes is empty: name at least one of Urban, Rural")
    return tuple(out)


def raw_to_train(mask: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Map a raw LoveDA mask (0 no-data, 1..7) to training labels (0..6, 255 ignore), as uint8."""
    if isinstance(mask, torch.Tensor):
        lut = torch.as_tensor(_RAW_TO_TRAIN, device=mask.device)
        if mask.dtype != torch.uint8:  # wider masks: out-of-range values are ignored, not wrapped
            mask = torch.where((mask < 0) | (mask > MAX_RAW_VALUE), RAW_NODATA, mask)
        return lut[mask.long()]
    raw = np.asarray(mask)
    if raw.dtype != np.uint8:
        # A 16-bit (or wider) mask: casting to uint8 would wrap 257 round to 1 (background).
        # Every value outside 0..7 is invalid, so it becomes no-data (ignored) instead.
        raw = np.where((raw < 0) | (raw > MAX_RAW_VALUE), RAW_NODATA, raw).astype(np.uint8)
    if IGNORE_INDEX == 255 and raw.size and int(raw.max()) <= NUM_CLASSES:
        # Every value valid (as in every released mask): one uint8 subtraction does the mapping,
        # no-data 0 wrapping round to 255; far cheaper than the table (benchmarks/RESULTS.md).
        return raw - np.uint8(1)
    return _RAW_TO_TRAIN[raw]


def train_to_raw(labels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Map training labels (0..6, 255 ignore) back to the raw encoding (1..7, 0 no-data), uint8."""
    if isinstance(labels, torch.Tensor):
        raw = labels.to(torch.int16) + 1
        raw[labels == IGNORE_INDEX] = RAW_NODATA
        return raw.to(torch.uint8)
    array = np.asarray(labels)
    raw_array = array.astype(np.int16) + 1
    raw_array[array == IGNORE_INDEX] = RAW_NODATA
    return raw_array.astype(np.uint8)


def colorize(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Paint training labels ``[H, W]`` in the palette; ignored pixels in :data:`IGNORE_COLOR`."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = IGNORE_COLOR
    lut[:NUM_CLASSES] = np.asarray(PALETTE, dtype=np.uint8)
    return lut[np.asarray(labels, dtype=np.uint8)]
