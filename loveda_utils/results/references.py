"""Published LoveDA results, shipped with the package as reference rows (never mixed with ours).

``references.csv`` beside this module holds, verbatim, results others published, each with its
source:

- MMSegmentation's model zoo (9 rows): **Val**, whole 1024x1024 tiles, single scale and ms+flip,
  trained 80k iterations at 4 GPUs x 4 images with 512 px crops; memory is the peak
  ``torch.cuda.max_memory_allocated`` per GPU in training, fps from their
  ``tools/analysis_tools/benchmark.py`` on a V100. Their backbones are ResNetV1c "D8" (deep stem,
  output stride 8), not torchvision's or smp's ResNets: same protocol, different networks.
- The LoveDA paper's baselines and RVSA (a remote-sensing foundation-model backbone): **Test**,
  scored by the official evaluation server, with per-class IoU.

Val and Test numbers do not compare with each other: every row states its ``split``.

The file stores IoU in percent, as published; :func:`load_references` returns fractions, the
unit of every record (tables show percent). A ``reference`` of ``as above`` takes the previous
row's, so each row names its source on its own.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, fields
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..data.classes import CLASS_NAMES, normalize_split

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "REFERENCES_FILE",
    "PublishedResult",
    "load_references",
    "reference_text",
    "references_frame",
]

#: The shipped file, a resource of this package (``pyproject.toml``'s package data).
REFERENCES_FILE = "references.csv"
_AS_ABOVE = "as above"


@dataclass(frozen=True)
class PublishedResult:
    """One published result. IoU values are fractions in [0, 1]; None where not published.

    Attributes:
        source: who published it (``MMSegmentation model zoo``, the LoveDA paper, ...).
        split: ``Val`` or ``Test`` (the archive's folder names).
        method, backbone: as the source names them.
        crop_size: training crop side in px; lr_schd: training iterations.
        mem_gb: peak training memory per GPU (GB); fps: inference speed on ``device``.
        miou, miou_ms_flip: mean IoU, single scale and multi-scale + flip.
        per_class_iou: class name -> IoU, every class of :data:`CLASS_NAMES`.
        reference: where in the source the numbers stand.
    """

    source: str
    split: str
    method: str
    backbone: str
    crop_size: int | None
    lr_schd: int | None
    mem_gb: float | None
    fps: float | None
    device: str | None
    miou: float
    miou_ms_flip: float | None
    per_class_iou: dict[str, float | None]
    reference: str


def _number(text: str) -> float | None:
    return float(text) if text.strip() else None


def _fraction(text: str) -> float | None:
    value = _number(text)
    return None if value is None else value / 100.0


def _crop_side(text: str) -> int | None:
    """``512x512`` -> 512 (a square crop's side)."""
    if not text.strip():
        return None
    sides = {int(side) for side in text.lower().split("x")}
    if len(sides) != 1:
        raise ValueError(f"crop_size {text!r} in {REFERENCES_FILE} is not square")
    return sides.pop()


def reference_text() -> str:
    """The shipped CSV, as it stands."""
    return resources.files(__package__).joinpath(REFERENCES_FILE).read_text(encoding="utf-8")


def _row(raw: dict[str, str], previous_reference: str) -> PublishedResult:
    reference = raw["reference"].strip()
    if reference == _AS_ABOVE:
        reference = previous_reference
    lr_schd = _number(raw["lr_schd"])
    miou = _fraction(raw["miou"])
    if miou is None:
        raise ValueError(f"{REFERENCES_FILE}: row {raw['method']} {raw['backbone']} has no miou")
    return PublishedResult(
        source=raw["source"],
        split=normalize_split(raw["split"]),
        method=raw["method"],
        backbone=raw["backbone"],
        crop_size=_crop_side(raw["crop_size"]),
        lr_schd=None if lr_schd is None else int(lr_schd),
        mem_gb=_number(raw["mem_gb"]),
        fps=_number(raw["fps"]),
        device=raw["device"].strip() or None,
        miou=miou,
        miou_ms_flip=_fraction(raw["miou_ms_flip"]),
        per_class_iou={name: _fraction(raw[name]) for name in CLASS_NAMES},
        reference=reference,
    )


def load_references() -> list[PublishedResult]:
    """Every published row, in the file's order."""
    rows: list[PublishedResult] = []
    for raw in csv.DictReader(io.StringIO(reference_text())):
        rows.append(_row(raw, rows[-1].reference if rows else ""))
    return rows


def references_frame() -> pd.DataFrame:
    """The rows as a DataFrame: one column per :class:`PublishedResult` field, the per-class
    IoUs as ``iou_<class>`` columns (fractions)."""
    import pandas as pd

    records: list[dict[str, Any]] = []
    for row in load_references():
        record = {f.name: getattr(row, f.name) for f in fields(row) if f.name != "per_class_iou"}
        record.update({f"iou_{name}": value for name, value in row.per_class_iou.items()})
        records.append(record)
    # Nullable integers: a Test-server row states no crop or schedule.
    return pd.DataFrame.from_records(records).astype({"crop_size": "Int64", "lr_schd": "Int64"})
