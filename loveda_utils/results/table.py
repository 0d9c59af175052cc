"""The MMSeg-style results table: :data:`COLUMNS` is the one definition of its columns.

From :data:`COLUMNS` derive the markdown (``benchmark.md``, the README section), the CSV
(``benchmark.csv``) and the comparison notebook's table; :func:`per_class_table` and
:func:`scene_table` break the same records down by class and by scene.

Records made on the synthetic mini-LoveDA are marked in every table (:data:`SYNTHETIC_MARK` on
the Method, "mini-LoveDA (synthetic)" in the Data column and a footnote): a synthetic number must
never look like a LoveDA result. Links (``config``, ``download``) are relative to the folder the
table is written to, so a table never holds a local absolute path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from ..data.classes import CLASS_NAMES
from .protocol import batch_text, protocol_notes
from .schema import Record, record_created
from .store import CHECKPOINT_FILE, NOTEBOOK_FILE, PARAMS_FILE

__all__ = [
    "COLUMNS",
    "MMSEG_COLUMNS",
    "SYNTHETIC_MARK",
    "TABLE_COLUMNS",
    "build_table",
    "interval_text",
    "latest_records",
    "per_class_table",
    "record_label",
    "record_labels",
    "scene_table",
    "select_records",
    "sort_records",
    "split_by_data",
    "table_markdown",
]

#: Appended to the Method of every row measured on the synthetic mini-LoveDA.
SYNTHETIC_MARK = "†"
SYNTHETIC_DATA = "mini-LoveDA (synthetic)"
NULL = "-"

# -- selecting and naming records ------------------------------------------------------------------


def _synthetic(record: Mapping[str, Any]) -> bool:
    return bool(record.get("dataset", {}).get("synthetic"))


def split_by_data(records: Iterable[Record]) -> tuple[list[Record], list[Record]]:
    """``(real, synthetic)``: records measured on LoveDA, and on the synthetic mini-LoveDA."""
    records = list(records)
    return [r for r in records if not _synthetic(r)], [r for r in records if _synthetic(r)]


def latest_records(records: Iterable[Record]) -> tuple[list[Record], list[Record]]:
    """Split records into the newest per ``run_group`` (by ``created``) and the superseded rest."""
    newest: dict[str, Record] = {}
    superseded = []
    for record in records:
        group = record["run_group"]
        best = newest.get(group)
        key = (record_created(record), str(record.get("run_name")))
        if best is None or key > (record_created(best), str(best.get("run_name"))):
            if best is not None:
                superseded.append(best)
            newest[group] = record
        else:
            superseded.append(record)
    return list(newest.values()), superseded


def sort_records(records: Iterable[Record]) -> list[Record]:
    """Table order: real LoveDA before synthetic, then mIoU descending (unmeasured last)."""

    def key(record: Record) -> tuple[bool, bool, float, str]:
        miou = record.get("miou")
        return (_synthetic(record), miou is None, -(miou or 0.0), record.get("run_group", ""))

    return sorted(records, key=key)


def _marked(text: str, record: Mapping[str, Any]) -> str:
    """``text`` with :data:`SYNTHETIC_MARK` appended when ``record`` is from synthetic data."""
    return f"{text} {SYNTHETIC_MARK}" if _synthetic(record) else text


def record_label(record: Mapping[str, Any]) -> str:
    """``"<Method> <Backbone>"``, with :data:`SYNTHETIC_MARK` when measured on synthetic data."""
    return _marked(f"{record['method']} {record['backbone']}", record)


def record_labels(records: Sequence[Record]) -> list[str]:
    """:func:`record_label` of each record; a label that repeats gets ``[<run_name>]`` added."""
    labels = [record_label(r) for r in records]
    return [
        f"{label} [{r['run_name']}]" if labels.count(label) > 1 else label
        for label, r in zip(labels, records)
    ]


def select_records(records: Iterable[Record], latest_only: bool = True) -> list[Record]:
    """The records a table shows, in table order (newest per run group when ``latest_only``)."""
    records = list(records)
    return sort_records(latest_records(records)[0] if latest_only else records)


# -- cells -----------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return NULL if value is None else f"{100 * value:.2f}"


def _fixed(digits: int) -> Callable[[Any], str]:
    return lambda value: NULL if value is None else f"{value:.{digits}f}"


def _data_label(record: Mapping[str, Any]) -> str:
    dataset = record["dataset"]
    if dataset.get("synthetic"):
        label = SYNTHETIC_DATA
    else:
        label = f"LoveDA {dataset['split']}"
    scenes = [str(s).capitalize() for s in dataset.get("scenes") or []]
    if scenes and sorted(scenes) != ["Rural", "Urban"]:
        label += f" ({', '.join(scenes)} only)"
    if (record.get("config") or {}).get("limit_eval_images"):
        label += f", {dataset['n_images']} images"  # a subset: not comparable with full Val
    return label


def _link(target: Path, base: Path) -> str:
    """``target`` relative to ``base`` (both made absolute, symlinks kept), URL-quoted."""
    relative = os.path.relpath(os.path.abspath(target), os.path.abspath(base))
    return quote(Path(relative).as_posix())


def _table_folder(record: Mapping[str, Any]) -> Path:
    """The results folder a loaded record lives in (``<results_dir>/runs/<name>`` -> ``<results_dir>``)."""
    return Path(record["_run_dir"]).parent.parent


def _config_path(record: Mapping[str, Any]) -> Path | None:
    run_dir = record.get("_run_dir")
    if run_dir is None:
        return None
    for name in (NOTEBOOK_FILE, PARAMS_FILE):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def _checkpoint_path(record: Mapping[str, Any]) -> Path | None:
    # Only the run folder's own checkpoint is linked: a ``checkpoint`` field naming a file
    # elsewhere (an evaluated checkpoint) is a local path, meaningless in a published table.
    run_dir = record.get("_run_dir")
    if run_dir is not None and (Path(run_dir) / CHECKPOINT_FILE).is_file():
        return Path(run_dir) / CHECKPOINT_FILE
    return None


def _scene(record: Mapping[str, Any], scene: str) -> float | None:
    return (record.get("per_scene_miou") or {}).get(scene)


def interval_text(value: float | None, ci: Sequence[float] | None) -> str:
    """A 95% interval of ``value`` (fractions) as the table shows it, in %.

    ``± 0.40`` when the interval is symmetric about the value within a tenth of its half-width
    (the larger half-width is shown, so the interval is never understated), else the bounds,
    ``[50.60, 51.40]``; :data:`NULL` when the record has none (records older than the intervals).
    """
    if value is None or not ci:
        return NULL
    low, high, centre = 100 * ci[0], 100 * ci[1], 100 * value
    below, above = centre - low, high - centre
    widest = max(below, above)
    if min(below, above) >= 0 and abs(above - below) <= 0.1 * widest:
        return f"± {widest:.2f}"
    return f"[{low:.2f}, {high:.2f}]"


def _global_batch(record: Mapping[str, Any]) -> int | None:
    devices = record.get("devices")
    return None if devices is None else int(devices) * int(record["batch_size"])


def _fps_text(record: Mapping[str, Any], key: str = "fps") -> str:
    """``fps ± spread`` of MMSeg's timing (``key="fps"``) or of the fast one (``"fps_fast"``)."""
    fps, spread = record.get(key), record.get(f"{key}_spread")
    if fps is None:
        return NULL
    return f"{fps:.2f}" if spread is None else f"{fps:.2f} ± {spread:.2f}"


@dataclass(frozen=True)
class Column:
    """One table column: its header, its raw value (CSV) and its display text (markdown).

    ``raw(record, base)`` and ``text(record, base)`` get the record and the folder links are
    relative to.
    """

    name: str
    raw: Callable[[Record, Path | None], Any]
    text: Callable[[Record, Path | None], str]


def _link_of(
    path_of: Callable[[Record], Path | None], record: Record, base: Path | None
) -> str | None:
    """The link to ``path_of(record)`` relative to ``base`` (None: the record's results folder)."""
    target = path_of(record)
    if target is None:
        return None
    return _link(target, base if base is not None else _table_folder(record))


def _raw_link(path_of: Callable[[Record], Path | None]) -> Callable[[Record, Path | None], Any]:
    return lambda r, b: _link_of(path_of, r, b)


def _md_link(
    label: str, path_of: Callable[[Record], Path | None]
) -> Callable[[Record, Path | None], str]:
    return lambda r, b: NULL if (link := _link_of(path_of, r, b)) is None else f"[{label}]({link})"


#: The table's columns, the one place they are defined: MMSeg's model-zoo columns in their order
#: (Method ... download), plus the training Batch (devices x images per device; raw: the global
#: batch), the mIoU's 95% bootstrap interval over tiles, Urban/Rural mIoU,
#: Params, GMACs (MMSeg's "GFLOPs" convention: a multiply-add is one), the fps under our faster
#: settings and the Data evaluated.
COLUMNS: tuple[Column, ...] = (
    Column("Method", lambda r, b: r["method"], lambda r, b: _marked(r["method"], r)),
    Column("Backbone", lambda r, b: r["backbone"], lambda r, b: r["backbone"]),
    Column(
        "Crop Size", lambda r, b: r["crop_size"], lambda r, b: f"{r['crop_size']}x{r['crop_size']}"
    ),
    Column("Lr schd", lambda r, b: r["lr_schd"], lambda r, b: str(int(r["lr_schd"]))),
    Column("Batch", lambda r, b: _global_batch(r), lambda r, b: batch_text(r)),
    Column("Mem (GB)", lambda r, b: r.get("mem_gb"), lambda r, b: _fixed(2)(r.get("mem_gb"))),
    Column("Inf time (fps)", lambda r, b: r.get("fps"), lambda r, b: _fps_text(r)),
    Column("Device", lambda r, b: r["device"], lambda r, b: r["device"]),
    Column("mIoU", lambda r, b: r.get("miou"), lambda r, b: _pct(r.get("miou"))),
    Column(
        "mIoU 95% CI",
        lambda r, b: r.get("miou_ci"),
        lambda r, b: interval_text(r.get("miou"), r.get("miou_ci")),
    ),
    Column(
        "mIoU(ms+flip)",
        lambda r, b: r.get("miou_ms_flip"),
        lambda r, b: _pct(r.get("miou_ms_flip")),
    ),
    Column("Urban mIoU", lambda r, b: _scene(r, "urban"), lambda r, b: _pct(_scene(r, "urban"))),
    Column("Rural mIoU", lambda r, b: _scene(r, "rural"), lambda r, b: _pct(_scene(r, "rural"))),
    Column("Params (M)", lambda r, b: r.get("params_m"), lambda r, b: _fixed(1)(r.get("params_m"))),
    Column("GMACs", lambda r, b: r.get("gmacs"), lambda r, b: _fixed(1)(r.get("gmacs"))),
    Column(
        "Inf time, fast (fps)", lambda r, b: r.get("fps_fast"), lambda r, b: _fps_text(r, "fps_fast")
    ),
    Column("Data", lambda r, b: _data_label(r), lambda r, b: _data_label(r)),
    Column("config", _raw_link(_config_path), _md_link("config", _config_path)),
    Column("download", _raw_link(_checkpoint_path), _md_link("model", _checkpoint_path)),
)
#: Column headers, in order.
TABLE_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS)
#: MMSeg's LoveDA model-zoo columns (a subsequence of :data:`TABLE_COLUMNS`).
MMSEG_COLUMNS: tuple[str, ...] = (
    "Method", "Backbone", "Crop Size", "Lr schd", "Mem (GB)", "Inf time (fps)", "Device",
    "mIoU", "mIoU(ms+flip)", "config", "download",
)  # fmt: skip
#: Extra CSV columns after the table's: provenance and protocol details, raw.
_CSV_EXTRA: tuple[tuple[str, Callable[[Record], Any]], ...] = (
    ("fps_spread", lambda r: r.get("fps_spread")),
    ("fps_size", lambda r: r.get("fps_size")),
    ("fps_fast_spread", lambda r: r.get("fps_fast_spread")),
    ("gflops", lambda r: r.get("gflops")),
    ("synthetic", _synthetic),
    ("split", lambda r: r["dataset"]["split"]),
    ("n_images", lambda r: r["dataset"]["n_images"]),
    ("accuracy", lambda r: r.get("accuracy")),
    ("mean_f1", lambda r: r.get("mean_f1")),
    ("model", lambda r: r["model"]),
    ("pretrained", lambda r: r["pretrained"]),
    ("run_name", lambda r: r["run_name"]),
    ("run_group", lambda r: r["run_group"]),
    ("created", lambda r: r["created"]),
)


def build_table(
    records: Iterable[Record],
    results_dir: str | os.PathLike[str] | None = None,
    latest_only: bool = True,
    formatted: bool = True,
    link_base: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """The results table, one row per run group (:data:`TABLE_COLUMNS`).

    Args:
        records: loaded records (:func:`~loveda_utils.results.store.load_records`); their
            ``_run_dir`` gives the links.
        results_dir: where the table is written; links (``config``, ``download``) are relative
            to it, or to ``link_base`` when given (e.g. a README's folder). With neither, each
            link is relative to the results folder its record was loaded from.
        latest_only: keep the newest record (by ``created``) of each ``run_group``; the others
            are listed in ``df.attrs["superseded"]``.
        formatted: display strings like MMSeg (mIoU in %, two decimals, ``-`` for null);
            ``False`` gives raw values (fractions as in the records) for the CSV, plus provenance
            columns after the table's.
        link_base: folder links are made relative to, when not ``results_dir``.

    Returns:
        A DataFrame sorted real LoveDA first, then by mIoU descending. ``df.attrs`` holds
        ``superseded`` (run names), ``synthetic`` (whether any row is synthetic) and
        ``protocol`` (the footnote lines, from the rows' records).
    """
    records = list(records)
    kept, superseded = latest_records(records) if latest_only else (records, [])
    kept = sort_records(kept)
    chosen = link_base if link_base is not None else results_dir
    base = Path(chosen) if chosen is not None else None
    rows = []
    for record in kept:
        if formatted:
            rows.append({c.name: c.text(record, base) for c in COLUMNS})
        else:
            row = {c.name: c.raw(record, base) for c in COLUMNS}
            row.update({name: get(record) for name, get in _CSV_EXTRA})
            rows.append(row)
    columns = list(TABLE_COLUMNS) + ([] if formatted else [name for name, _ in _CSV_EXTRA])
    df = pd.DataFrame(rows, columns=columns)
    df.attrs["superseded"] = sorted(str(r["run_name"]) for r in superseded)
    df.attrs["synthetic"] = any(_synthetic(r) for r in kept)
    df.attrs["protocol"] = protocol_notes(kept, record_labels(kept))
    return df


def _cell(value: Any) -> str:
    """A value as a markdown table cell (pipes escaped, no newlines)."""
    return str(NULL if value is None else value).replace("|", "\\|").replace("\n", " ")


#: What an empty table says.
NO_RUNS = (
    "_No runs yet: run `python -m loveda_utils run-suite` or `notebooks/03_benchmark.ipynb`; each "
    "run writes `runs/<run_name>/metrics.json`._"
)


def table_markdown(
    df: pd.DataFrame, problems: Sequence[str] = (), protocol: bool = True, empty: str = NO_RUNS
) -> str:
    """The table as a markdown pipe table, with footnotes.

    Footnotes: the measurement protocol (``df.attrs["protocol"]``, from the records), the
    synthetic-data warning (when a row is synthetic), superseded runs (``df.attrs["superseded"]``)
    and damaged records (``problems``, as :func:`~loveda_utils.results.store.load_records`
    names them). With no rows, the line ``empty`` replaces the table.
    """
    lines = []
    if df.empty:
        lines.append(empty)
    else:
        lines.append("| " + " | ".join(_cell(c) for c in df.columns) + " |")
        lines.append("|" + "|".join("---" for _ in df.columns) + "|")
        for row in df.itertuples(index=False):
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    notes = list(df.attrs.get("protocol", [])) if protocol else []
    if df.attrs.get("synthetic"):
        notes.append(
            f"{SYNTHETIC_MARK} {SYNTHETIC_DATA}: these numbers come from the synthetic "
            "mini-LoveDA generator (`make-synthetic`), NOT from LoveDA; they only show that the "
            "pipeline runs and are not LoveDA results."
        )
    superseded = df.attrs.get("superseded") or []
    if superseded:
        notes.append(
            f"{len(superseded)} older run(s) superseded by a newer run of the same group "
            f"(not shown): {', '.join(f'`{s}`' for s in superseded)}."
        )
    if problems:
        notes.append(
            f"{len(problems)} damaged record(s) left out:\n"
            + "\n".join(f"  - `{p}`" for p in problems)
        )
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


def _as_pct(value: float | None) -> float:
    return float("nan") if value is None else round(100 * value, 2)


def per_class_table(
    records: Iterable[Record], ms_flip: bool = False, latest_only: bool = True
) -> pd.DataFrame:
    """Per-class IoU (%) per model: rows models (table order), columns classes, then mIoU.

    With ``ms_flip``, each record that has ms+flip scores adds a ``"<label> (ms+flip)"`` row.
    Classes without a value (not present in the evaluated data) are NaN.
    """
    records = select_records(records, latest_only)
    rows, index = [], []
    for label, record in zip(record_labels(records), records):
        variants = [("", record["per_class_iou"], record.get("miou"))]
        if ms_flip and record.get("per_class_iou_ms_flip"):
            variants.append(
                (" (ms+flip)", record["per_class_iou_ms_flip"], record.get("miou_ms_flip"))
            )
        for suffix, values, miou in variants:
            index.append(label + suffix)
            rows.append([_as_pct(values.get(c)) for c in CLASS_NAMES] + [_as_pct(miou)])
    return pd.DataFrame(rows, index=pd.Index(index, name="model"), columns=[*CLASS_NAMES, "mIoU"])


def scene_table(records: Iterable[Record], latest_only: bool = True) -> pd.DataFrame:
    """Urban vs rural mIoU (%) per model, their gap (urban - rural) and the overall mIoU."""
    records = select_records(records, latest_only)
    rows = []
    for record in records:
        urban, rural = _as_pct(_scene(record, "urban")), _as_pct(_scene(record, "rural"))
        rows.append([urban, rural, round(urban - rural, 2), _as_pct(record.get("miou"))])
    return pd.DataFrame(
        rows,
        index=pd.Index(record_labels(records), name="model"),
        columns=["Urban mIoU", "Rural mIoU", "Urban - Rural", "mIoU"],
    )
