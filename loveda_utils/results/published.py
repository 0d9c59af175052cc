"""Published LoveDA results as the report shows them: beside ours, never among ours.

The rows themselves (MMSegmentation's model zoo on Val, the LoveDA paper's baselines and a
foundation model on the Test server, each with its source) are loaded by
:func:`loveda_utils.results.references.load_references`. This module presents them:

- :func:`published_markdown`: one table per split (Val and Test do not compare), in the columns
  of our table that the sources state, every row naming its source and marked as reported,
- :func:`published_per_class_table`: the rows that publish per-class IoU, for the heatmap,
- :func:`fps_comparable`: whether one of our rows was timed like the published fps, the rule by
  which the mIoU-vs-fps chart draws them on the same axis as ours.

Nothing here ranks a published row with ours: tables, heatmap rows and chart markers keep them
apart, and every label says "reported".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from ..data.classes import CLASS_NAMES, SPLITS
from .references import PublishedResult, load_references
from .table import NULL

__all__ = [
    "PUBLISHED_FPS_SIZE",
    "PUBLISHED_MARK",
    "fps_comparable",
    "published_label",
    "published_markdown",
    "published_per_class_table",
    "published_rows",
]

#: How the published fps were timed (``loveda_utils/results/references.py``: MMSeg's
#: ``tools/analysis_tools/benchmark.py``, fp32, batch 1, whole 1024x1024 tiles, on a V100).
PUBLISHED_FPS_SIZE = 1024
#: What every published row's label carries.
PUBLISHED_MARK = "reported"


def published_rows() -> list[PublishedResult]:
    """Every published row shipped with the package
    (:func:`loveda_utils.results.references.load_references`)."""
    return load_references()


def published_label(row: PublishedResult) -> str:
    """``"<Method> <Backbone> (reported, <Split>)"``: never mistaken for one of our rows."""
    return f"{row.method} {row.backbone} ({PUBLISHED_MARK}, {row.split})"


def _on_cuda(device: str) -> bool:
    # ``runtime.device_name`` writes "CPU <model> (<n> threads)" or "Apple MPS" for the others;
    # a CUDA device is named by torch.cuda.get_device_name.
    return bool(device) and not device.startswith("CPU") and device != "Apple MPS"


def fps_comparable(record: Mapping[str, Any]) -> bool:
    """Whether ``record``'s fps was timed like the published ones: whole
    :data:`PUBLISHED_FPS_SIZE` px tiles, full precision, batch 1 (always), on a CUDA GPU.

    The device class is the widest comparison that still means something: a GPU of another
    generation moves fps by a factor, a CPU by orders of magnitude, so CPU rows and published
    rows never share an fps axis.
    """
    return (
        record.get("fps_size") == PUBLISHED_FPS_SIZE
        and record.get("amp") is False
        and _on_cuda(str(record.get("device") or ""))
    )


def _pct(value: float | None) -> str:
    """In %, to the digits the source gave (at most two): ``46.7`` stays ``46.7``, not ``46.70``."""
    if value is None:
        return NULL
    text = f"{100 * value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _number(digits: int) -> Callable[[Any], str]:
    return lambda value: NULL if value is None else f"{value:.{digits}f}"


#: The published tables' columns: ours that a source can state, then its Data and Source.
_COLUMNS: tuple[tuple[str, Callable[[PublishedResult], str]], ...] = (
    ("Method", lambda p: p.method),
    ("Backbone", lambda p: p.backbone),
    ("Crop Size", lambda p: NULL if p.crop_size is None else f"{p.crop_size}x{p.crop_size}"),
    ("Lr schd", lambda p: NULL if p.lr_schd is None else str(p.lr_schd)),
    ("Mem (GB)", lambda p: _number(2)(p.mem_gb)),
    ("Inf time (fps)", lambda p: _number(2)(p.fps)),
    ("Device", lambda p: p.device or NULL),
    ("mIoU", lambda p: _pct(p.miou)),
    ("mIoU(ms+flip)", lambda p: _pct(p.miou_ms_flip)),
)


def _split_order(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _split_table(rows: Sequence[PublishedResult], notes: dict[str, int]) -> list[str]:
    """One split's rows as a pipe table; columns no row states are left out."""
    columns = [(name, get) for name, get in _COLUMNS if any(get(p) != NULL for p in rows)]
    header = [name for name, _ in columns] + ["Data", "Source"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for p in rows:
        note = notes.setdefault(p.reference, len(notes) + 1)
        cells = [get(p) for _, get in columns]
        cells += [f"LoveDA {p.split}, {PUBLISHED_MARK}", f"{p.source} [{note}]"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def published_markdown(rows: Sequence[PublishedResult], heading: str = "####") -> str:
    """The published rows as markdown: an introduction, one table per split (``heading`` level
    titles), then the numbered references the Source column points to."""
    if not rows:
        return "_No published reference rows given._\n"
    lines = [
        "Results as their sources report them, **not run here** and not ranked with ours. "
        "Val and Test numbers do not compare with each other (Test is scored by the LoveDA "
        "evaluation server), and the sources' backbones are their own networks: MMSeg's `D8` "
        "ResNets are ResNetV1c with output stride 8, not torchvision's or smp's.",
    ]
    notes: dict[str, int] = {}
    for split in sorted({p.split for p in rows}, key=_split_order):
        in_split = [p for p in rows if p.split == split]
        lines += ["", f"{heading} LoveDA {split} (published)", ""]
        lines += _split_table(in_split, notes)
    lines += [""] + [f"- [{n}] {_cell(text)}" for text, n in notes.items()]
    return "\n".join(lines) + "\n"


def published_per_class_table(rows: Sequence[PublishedResult]) -> pd.DataFrame:
    """Per-class IoU (%) of the rows that publish it, labelled by :func:`published_label`:
    the columns of :func:`loveda_utils.results.table.per_class_table` (classes, then mIoU)."""
    kept = [p for p in rows if any(v is not None for v in p.per_class_iou.values())]

    def pct(value: float | None) -> float:
        return float("nan") if value is None else round(100 * value, 2)

    data = [[pct(p.per_class_iou.get(c)) for c in CLASS_NAMES] + [pct(p.miou)] for p in kept]
    index = pd.Index([published_label(p) for p in kept], name="model")
    return pd.DataFrame(data, index=index, columns=[*CLASS_NAMES, "mIoU"])
