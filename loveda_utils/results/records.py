"""Results records, atomic writes and the MMSeg-style results table.

Every benchmark run writes one record, ``<results_dir>/runs/<run_name>/metrics.json`` (format in
``docs/CONTRACTS.md``, "Run folders and results records"). This module is the one place that

- claims run folders (never reusing one) and writes files atomically (temp file + ``os.replace``),
- validates and loads the records (a damaged record is reported, never raised),
- turns them into the table: :data:`TABLE_COLUMNS` is the single definition of its columns, from
  which the markdown (``benchmark.md``), the CSV (``benchmark.csv``) and the README section derive,
- renders the comparison notebook ``04_results_comparison.ipynb`` (:func:`render_comparison`).

Records made on the synthetic mini-LoveDA are marked in every table (:data:`SYNTHETIC_MARK` on the
Method, "mini-LoveDA (synthetic)" in the Data column and a footnote): a synthetic number must never
look like a LoveDA result.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from ..data.classes import CLASS_NAMES
from ..errors import ConfigError
from ..files import write_text_atomic

__all__ = [
    "COLUMNS",
    "MMSEG_COLUMNS",
    "README_END",
    "README_START",
    "RECORD_SCHEMA",
    "REQUIRED_FIELDS",
    "SYNTHETIC_MARK",
    "TABLE_COLUMNS",
    "build_table",
    "claim_run_dir",
    "completed_runs",
    "latest_records",
    "load_records",
    "per_class_table",
    "record_label",
    "record_labels",
    "render_comparison",
    "run_group_for",
    "scene_table",
    "select_records",
    "sort_records",
    "table_markdown",
    "validate_record",
    "write_report",
]

Record = dict[str, Any]

#: Version of the ``metrics.json`` format this module reads and writes.
RECORD_SCHEMA: int = 1
#: File names inside a run folder (CONTRACTS.md).
METRICS_FILE = "metrics.json"
PARAMS_FILE = "params.json"
NOTEBOOK_FILE = "03_benchmark.ipynb"
CHECKPOINT_FILE = Path("checkpoints") / "last.ckpt"
VISUALS_DIR = "visuals"
#: The table files in ``<results_dir>`` and the rendered comparison.
MARKDOWN_FILE = "benchmark.md"
CSV_FILE = "benchmark.csv"
COMPARISON_NOTEBOOK = "04_results_comparison.ipynb"
#: The README section :func:`write_report` rewrites lies between these two lines.
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
#: Appended to the Method of every row measured on the synthetic mini-LoveDA.
SYNTHETIC_MARK = "†"
SYNTHETIC_DATA = "mini-LoveDA (synthetic)"
NULL = "-"

# -- the record format -----------------------------------------------------------------------------

_INT = "int"
_NUM = "number"
_STR = "str"
_BOOL = "bool"
_DICT = "object"

#: field -> (type, nullable). The order is CONTRACTS.md's.
_FIELDS: dict[str, tuple[str, bool]] = {
    "schema": (_INT, False),
    "run_name": (_STR, False),
    "run_group": (_STR, False),
    "status": (_STR, False),
    "model": (_STR, False),
    "method": (_STR, False),
    "backbone": (_STR, False),
    "pretrained": (_STR, False),
    "crop_size": (_INT, False),
    "lr_schd": (_INT, False),
    "batch_size": (_INT, False),
    "mem_gb": (_NUM, True),
    "mem_source": (_STR, True),
    "fps": (_NUM, False),
    "fps_spread": (_NUM, False),
    "fps_size": (_INT, False),
    "fps_images": (_INT, False),
    "device": (_STR, False),
    "precision": (_STR, True),  # null when only evaluated here
    "amp": (_BOOL, False),
    "miou": (_NUM, True),
    "miou_ms_flip": (_NUM, True),
    "accuracy": (_NUM, False),
    "mean_f1": (_NUM, False),
    "per_class_iou": (_DICT, False),
    "per_class_iou_ms_flip": (_DICT, True),
    "per_scene_miou": (_DICT, False),
    "per_scene_miou_ms_flip": (_DICT, True),
    "params_m": (_NUM, False),
    "gflops": (_NUM, False),
    "dataset": (_DICT, False),
    "train_seconds": (_NUM, True),
    "eval_seconds": (_NUM, True),
    "checkpoint": (_STR, True),
    "config": (_DICT, False),
    "git_commit": (_STR, True),  # null outside a git checkout
    "versions": (_DICT, False),
    "seed": (_INT, False),
    "created": (_STR, False),
}
#: Every field a ``metrics.json`` must hold (CONTRACTS.md).
REQUIRED_FIELDS: tuple[str, ...] = tuple(_FIELDS)
#: Fields holding a fraction in [0, 1] (or null).
_FRACTIONS = ("miou", "miou_ms_flip", "accuracy", "mean_f1")
_SCENE_KEYS = ("urban", "rural")
_DATASET_FIELDS: dict[str, tuple[str, bool]] = {
    "root": (_STR, False),
    "split": (_STR, False),
    "scenes": ("list", False),
    "n_images": (_INT, False),
    "synthetic": (_BOOL, False),
}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list | tuple)
    return isinstance(value, dict)


def _check_fields(
    obj: Mapping[str, Any], fields: Mapping[str, tuple[str, bool]], prefix: str
) -> list[str]:
    problems = []
    for name, (kind, nullable) in fields.items():
        if name not in obj:
            problems.append(f"missing field {prefix}{name!r}")
        elif obj[name] is None:
            if not nullable:
                problems.append(f"{prefix}{name} is null, expected {kind}")
        elif not _type_ok(obj[name], kind):
            problems.append(
                f"{prefix}{name} is {type(obj[name]).__name__} {obj[name]!r:.40}, expected {kind}"
            )
    return problems


def _check_fraction(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not _type_ok(value, _NUM):
        return [f"{where} is {value!r:.40}, expected a number or null"]
    if not 0.0 <= value <= 1.0:
        return [f"{where} = {value!r} is outside [0, 1] (IoU values are fractions, not percent)"]
    return []


def validate_record(record: Any) -> list[str]:
    """Problems of a results record: missing fields, wrong types, IoU values outside [0, 1].

    Returns:
        One message per problem; an empty list means the record is valid.
    """
    if not isinstance(record, dict):
        return [f"a record must be a JSON object, got {type(record).__name__}"]
    problems = _check_fields(record, _FIELDS, "")
    if _type_ok(record.get("schema"), _INT) and record["schema"] != RECORD_SCHEMA:
        problems.append(f"schema is {record['schema']}, this version reads schema {RECORD_SCHEMA}")
    if isinstance(record.get("status"), str) and record["status"] != "complete":
        problems.append(f"status is {record['status']!r}, expected 'complete'")
    if isinstance(record.get("created"), str):
        try:
            datetime.fromisoformat(record["created"])
        except ValueError:
            problems.append(f"created={record['created']!r} is not an ISO 8601 time")
    for name in _FRACTIONS:
        if name in record:
            problems += _check_fraction(record[name], name)
    for name in ("per_class_iou", "per_class_iou_ms_flip"):
        values = record.get(name)
        if isinstance(values, dict):
            missing = [c for c in CLASS_NAMES if c not in values]
            if missing:
                problems.append(f"{name} lacks classes {missing} (expected {list(CLASS_NAMES)})")
            for cls, value in values.items():
                problems += _check_fraction(value, f"{name}[{cls!r}]")
    for name in ("per_scene_miou", "per_scene_miou_ms_flip"):
        values = record.get(name)
        if isinstance(values, dict):
            missing = [s for s in _SCENE_KEYS if s not in values]
            if missing:
                problems.append(f"{name} lacks {missing} (expected keys 'urban', 'rural')")
            for scene, value in values.items():
                problems += _check_fraction(value, f"{name}[{scene!r}]")
    if isinstance(record.get("dataset"), dict):
        problems += _check_fields(record["dataset"], _DATASET_FIELDS, "dataset.")
    return problems


# -- run folders -----------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def run_group_for(model: str, synthetic: bool, crop_size: int, lr_schd: int) -> str:
    """``<model>-<mini|loveda>-<crop_size>px-<lr_schd>it``: runs of one group are repeats.

    >>> run_group_for("deeplabv3plus_resnet50", False, 512, 80000)
    'deeplabv3plus_resnet50-loveda-512px-80000it'
    """
    return f"{model}-{'mini' if synthetic else 'loveda'}-{int(crop_size)}px-{int(lr_schd)}it"


def claim_run_dir(
    results_dir: str | os.PathLike[str], run_group: str, run_name: str | None = None
) -> Path:
    """Create and return a fresh ``<results_dir>/runs/<name>`` folder for one run.

    ``name`` is ``run_name`` (default: ``run_group``); when that folder exists, ``<name>-r2``,
    ``<name>-r3``, ... The folder is claimed with ``mkdir(exist_ok=False)``, so two runs started
    at the same time never share a folder and no run ever writes into an earlier one's.

    Raises:
        ConfigError: when the name is not a plain folder name.
    """
    base = run_name if run_name not in (None, "") else run_group
    if not isinstance(base, str) or not _NAME.match(base):
        arg = "run_name" if run_name not in (None, "") else "run_group"
        raise ConfigError(
            f"{arg}={base!r} is not a plain folder name: use letters, digits and . _ + = - "
            "(no slashes or spaces, not starting with a dot)"
        )
    runs = Path(results_dir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    attempt = 1
    while True:
        candidate = runs / (base if attempt == 1 else f"{base}-r{attempt}")
        try:
            candidate.mkdir(exist_ok=False)
            return candidate
        except FileExistsError:
            attempt += 1


def _read_record(path: Path) -> tuple[Record | None, str | None]:
    """``(record, None)`` for a valid ``metrics.json``, else ``(None, problem naming the file)``."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{path}: unreadable ({err})"
    except json.JSONDecodeError as err:
        return None, f"{path}: not valid JSON ({err})"
    problems = validate_record(record)
    if problems:
        return None, f"{path}: " + "; ".join(problems)
    record["_run_dir"] = path.parent
    return record, None


def _record_paths(results_dir: Path) -> list[Path]:
    return sorted((results_dir / "runs").glob(f"*/{METRICS_FILE}"))


def load_records(results_dir: str | os.PathLike[str]) -> tuple[list[Record], list[str]]:
    """Read every ``<results_dir>/runs/*/metrics.json``.

    Returns:
        ``(records, problems)``: the valid records, each with ``_run_dir`` (its folder) added,
        and one message per damaged record (bad JSON, missing fields, wrong schema, ...) naming
        the file and what is wrong. A damaged record never raises.

    Raises:
        ConfigError: when ``results_dir`` is not a folder.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ConfigError(
            f"results_dir={str(results_dir)!r} is not a folder: pass the folder holding runs/ "
            "(default: results/ in the repository), or run the benchmark first"
        )
    records, problems = [], []
    for path in _record_paths(results_dir):
        record, problem = _read_record(path)
        if record is not None:
            records.append(record)
        else:
            problems.append(problem)
    return records, problems


def completed_runs(results_dir: str | os.PathLike[str], run_group: str) -> list[Path]:
    """Run folders of ``run_group`` holding a valid ``metrics.json``, oldest first.

    Runs without a record (crashed, still running) or with a damaged one do not count: the
    suite may repeat them.
    """
    found = []
    for path in _record_paths(Path(results_dir)):
        record, _ = _read_record(path)
        if record is not None and record["run_group"] == run_group:
            found.append((_created(record), path.parent.name, path.parent))
    return [p for *_, p in sorted(found)]


# -- selecting and naming records ------------------------------------------------------------------


def _created(record: Mapping[str, Any]) -> datetime:
    """The record's ``created`` as an aware datetime (naive times are taken as UTC)."""
    try:
        when = datetime.fromisoformat(str(record.get("created")))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _synthetic(record: Mapping[str, Any]) -> bool:
    return bool(record.get("dataset", {}).get("synthetic"))


def latest_records(records: Iterable[Record]) -> tuple[list[Record], list[Record]]:
    """Split records into the newest per ``run_group`` (by ``created``) and the superseded rest."""
    newest: dict[str, Record] = {}
    superseded = []
    for record in records:
        group = record["run_group"]
        best = newest.get(group)
        key = (_created(record), str(record.get("run_name")))
        if best is None or key > (_created(best), str(best.get("run_name"))):
            if best is not None:
                superseded.append(best)
            newest[group] = record
        else:
            superseded.append(record)
    return list(newest.values()), superseded


def sort_records(records: Iterable[Record]) -> list[Record]:
    """Table order: real LoveDA before synthetic, then mIoU descending (unmeasured last)."""

    def key(record: Record) -> tuple:
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


# -- the table -------------------------------------------------------------------------------------


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


def _link(target: Path, base: Path | None) -> str:
    path = os.path.relpath(target, base) if base is not None else str(target)
    return quote(Path(path).as_posix())


def _config_path(record: Mapping[str, Any]) -> Path | None:
    run_dir = record.get("_run_dir")
    if run_dir is None:
        return None
    for name in (NOTEBOOK_FILE, PARAMS_FILE):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def _checkpoint_path(record: Mapping[str, Any]) -> Path | None:
    run_dir = record.get("_run_dir")
    if run_dir is not None and (Path(run_dir) / CHECKPOINT_FILE).is_file():
        return Path(run_dir) / CHECKPOINT_FILE
    return None


def _scene(record: Mapping[str, Any], scene: str) -> float | None:
    return (record.get("per_scene_miou") or {}).get(scene)


def _fps_text(record: Mapping[str, Any]) -> str:
    fps, spread = record.get("fps"), record.get("fps_spread")
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


def _raw_link(path_of: Callable[[Record], Path | None]) -> Callable[[Record, Path | None], Any]:
    return lambda r, b: None if path_of(r) is None else _link(path_of(r), b)


def _md_link(
    label: str, path_of: Callable[[Record], Path | None]
) -> Callable[[Record, Path | None], str]:
    return lambda r, b: NULL if path_of(r) is None else f"[{label}]({_link(path_of(r), b)})"


#: The table's columns, the one place they are defined: MMSeg's model-zoo columns in their order
#: (Method ... download), plus Urban/Rural mIoU, Params, GFLOPs and the Data evaluated.
COLUMNS: tuple[Column, ...] = (
    Column("Method", lambda r, b: r["method"], lambda r, b: _marked(r["method"], r)),
    Column("Backbone", lambda r, b: r["backbone"], lambda r, b: r["backbone"]),
    Column(
        "Crop Size", lambda r, b: r["crop_size"], lambda r, b: f"{r['crop_size']}x{r['crop_size']}"
    ),
    Column("Lr schd", lambda r, b: r["lr_schd"], lambda r, b: str(int(r["lr_schd"]))),
    Column("Mem (GB)", lambda r, b: r.get("mem_gb"), lambda r, b: _fixed(2)(r.get("mem_gb"))),
    Column("Inf time (fps)", lambda r, b: r.get("fps"), lambda r, b: _fps_text(r)),
    Column("Device", lambda r, b: r["device"], lambda r, b: r["device"]),
    Column("mIoU", lambda r, b: r.get("miou"), lambda r, b: _pct(r.get("miou"))),
    Column(
        "mIoU(ms+flip)",
        lambda r, b: r.get("miou_ms_flip"),
        lambda r, b: _pct(r.get("miou_ms_flip")),
    ),
    Column("Urban mIoU", lambda r, b: _scene(r, "urban"), lambda r, b: _pct(_scene(r, "urban"))),
    Column("Rural mIoU", lambda r, b: _scene(r, "rural"), lambda r, b: _pct(_scene(r, "rural"))),
    Column("Params (M)", lambda r, b: r.get("params_m"), lambda r, b: _fixed(1)(r.get("params_m"))),
    Column("GFLOPs", lambda r, b: r.get("gflops"), lambda r, b: _fixed(1)(r.get("gflops"))),
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
        records: loaded records (:func:`load_records`); ``_run_dir`` is used for the links.
        results_dir: where the table is written; links (``config``, ``download``) are relative
            to it (or to ``link_base`` when given). Absolute paths when both are None.
        latest_only: keep the newest record (by ``created``) of each ``run_group``; the others
            are listed in ``df.attrs["superseded"]``.
        formatted: display strings like MMSeg (mIoU in %, two decimals, ``-`` for null);
            ``False`` gives raw values (fractions as in the records) for the CSV, plus provenance
            columns after the table's.
        link_base: folder links are made relative to, when not ``results_dir`` (e.g. a README's).

    Returns:
        A DataFrame sorted real LoveDA first, then by mIoU descending. ``df.attrs`` holds
        ``superseded`` (run names), ``synthetic`` (whether any row is synthetic) and
        ``fps_sizes`` (the timing input sizes in use).
    """
    records = list(records)
    kept, superseded = latest_records(records) if latest_only else (records, [])
    kept = sort_records(kept)
    base = (
        Path(link_base) if link_base is not None else (Path(results_dir) if results_dir else None)
    )
    if base is not None:
        base = base.resolve()
    rows = []
    for record in kept:
        if base is not None and record.get("_run_dir") is not None:
            record = {**record, "_run_dir": Path(record["_run_dir"]).resolve()}
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
    df.attrs["fps_sizes"] = sorted({r["fps_size"] for r in kept if r.get("fps_size")})
    return df


def _cell(value: Any) -> str:
    """A value as a markdown table cell (pipes escaped, no newlines)."""
    return str(NULL if value is None else value).replace("|", "\\|").replace("\n", " ")


def _protocol_line(fps_sizes: Sequence[int]) -> str:
    sizes = "/".join(f"{s}x{s}" for s in fps_sizes) or "1024x1024"
    return (
        "Protocol (MMSeg's): mIoU in % on the evaluated split at full resolution, whole-image "
        "inference, no-data ignored; mIoU(ms+flip): scales 0.5-1.75 with flips; Inf time: median "
        f"± IQR fps at batch 1, {sizes} input; Mem: peak training memory; GFLOPs at "
        "1x3x1024x1024."
    )


def table_markdown(
    df: pd.DataFrame,
    problems: Sequence[str] = (),
    protocol: bool = True,
) -> str:
    """The table as a markdown pipe table, with footnotes.

    Footnotes: the measurement protocol, the synthetic-data warning (when a row is synthetic),
    superseded runs (``df.attrs["superseded"]``) and damaged records (``problems``).
    With no rows, a line saying there are no runs yet replaces the table.
    """
    lines = []
    if df.empty:
        lines.append(
            "_No runs yet: run `python -m loveda_utils run-suite` or "
            "`notebooks/03_benchmark.ipynb`; each run writes `runs/<run_name>/metrics.json`._"
        )
    else:
        lines.append("| " + " | ".join(_cell(c) for c in df.columns) + " |")
        lines.append("|" + "|".join("---" for _ in df.columns) + "|")
        for row in df.itertuples(index=False):
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    notes = []
    if protocol and not df.empty:
        notes.append(_protocol_line(df.attrs.get("fps_sizes", [])))
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


def _as_pct(value: float | None) -> float:
    return float("nan") if value is None else round(100 * value, 2)


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


# -- the report ------------------------------------------------------------------------------------


def _replace_section(path: Path, section: str) -> bytes:
    """``path``'s bytes with the text between the results markers replaced by ``section``."""
    if not path.is_file():
        raise ConfigError(
            f"readme={str(path)!r} is not a file; pass an existing README or --no-readme"
        )
    text = path.read_bytes().decode("utf-8")
    starts, ends = text.count(README_START), text.count(README_END)
    start, end = text.find(README_START), text.find(README_END)
    if starts != 1 or ends != 1 or end < start:
        raise ConfigError(
            f"{path}: the results section needs exactly one line {README_START!r} followed later "
            f"by one line {README_END!r} (found {starts} start and {ends} end marker(s)); add "
            "them where the table should go, or pass --no-readme"
        )
    newline = "\r\n" if "\r\n" in text else "\n"
    body = section.strip("\n").replace("\n", newline)
    head = text[: start + len(README_START)]
    return (head + newline + body + newline + text[end:]).encode("utf-8")


def write_report(
    results_dir: str | os.PathLike[str], readme: str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """Write ``benchmark.md`` and ``benchmark.csv`` in ``results_dir``, and the README section.

    The README (when given) keeps every byte outside the markers :data:`README_START` and
    :data:`README_END`; the table between them has links relative to the README's folder. All
    files are written atomically, and only after the README's markers are checked.

    Returns:
        ``{"markdown": ..., "csv": ..., "readme": ...}`` (``readme`` only when given).

    Raises:
        ConfigError: ``results_dir`` is not a folder, or the README or its markers are missing.
    """
    results_dir = Path(results_dir)
    records, problems = load_records(results_dir)
    table = build_table(records, results_dir)
    markdown = (
        "# LoveDA benchmark results\n\n"
        "Generated by `python -m loveda_utils report` from `runs/*/metrics.json`; "
        "do not edit by hand.\n\n" + table_markdown(table, problems)
    )
    raw = build_table(records, results_dir, formatted=False)
    writes: dict[str, tuple[Path, str | bytes]] = {
        "markdown": (results_dir / MARKDOWN_FILE, markdown),
        "csv": (results_dir / CSV_FILE, raw.to_csv(index=False)),
    }
    if readme is not None:
        readme = Path(readme)
        section = table_markdown(
            build_table(records, results_dir, link_base=readme.parent), problems
        )
        writes["readme"] = (readme, _replace_section(readme, section))
    for path, data in writes.values():
        write_text_atomic(path, data)
    return {key: path for key, (path, _) in writes.items()}


def render_comparison(
    results_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    max_tiles: int = 4,
) -> dict[str, Path]:
    """Execute ``notebooks/04_results_comparison.ipynb`` on ``results_dir`` and export HTML.

    Writes ``<out_dir>/04_results_comparison.ipynb`` (executed, with outputs) and
    ``<out_dir>/04_results_comparison.html`` (images embedded); ``out_dir`` defaults to
    ``results_dir``, where the table's links resolve. Each file replaces the previous one only
    once complete; a failed execution is kept as ``04_results_comparison.failed.ipynb``.

    Returns:
        ``{"notebook": ..., "html": ...}``.
    """
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    from ..paths import NOTEBOOKS_DIR

    results_dir = Path(results_dir).resolve()
    if not results_dir.is_dir():
        raise ConfigError(f"results_dir={str(results_dir)!r} is not a folder")
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook = out_dir / COMPARISON_NOTEBOOK
    tmp = out_dir / f".{COMPARISON_NOTEBOOK}.{uuid.uuid4().hex[:8]}.tmp.ipynb"
    parameters = {
        "results_dir": str(results_dir),
        "data_root": None if data_root is None else str(Path(data_root).resolve()),
        "max_tiles": int(max_tiles),
    }
    try:
        pm.execute_notebook(
            str(NOTEBOOKS_DIR / COMPARISON_NOTEBOOK), str(tmp), parameters=parameters,
            kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS_DIR),
        )  # fmt: skip
    except BaseException:
        if tmp.exists():
            os.replace(tmp, out_dir / COMPARISON_NOTEBOOK.replace(".ipynb", ".failed.ipynb"))
        raise
    os.replace(tmp, notebook)
    exporter = HTMLExporter()
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    html = write_text_atomic(notebook.with_suffix(".html"), body)
    return {"notebook": notebook, "html": html}
