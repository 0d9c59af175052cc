"""The results record's schema: :data:`FIELDS` is the one definition of ``metrics.json``.

Every benchmark run writes one record, ``<results_dir>/runs/<run_name>/metrics.json``. From
:data:`FIELDS` alone come

- :func:`validate_record`: what a reader accepts (types, nulls, fractions in [0, 1], keys),
- :func:`check_record_keys`: what the record builder (``loveda_utils/benchmark/run.py``) must
  write, no key missing and none unknown,
- the field table of ``docs/CONTRACTS.md`` (:func:`contracts_table`, written between
  :data:`CONTRACTS_START` and :data:`CONTRACTS_END` by
  ``python -m loveda_utils.results.schema --write-contracts``; a test fails when it differs).

A new record field is therefore added here, once, and the builder, the reader and the docs follow.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from ..data.classes import CLASS_NAMES, SCENES, SPLITS
from ..errors import RecordError
from ..evaluation.inference import Mode
from ..files import write_text_atomic
from ..paths import PROJECT_ROOT
from .sections import replace_section, section_text

__all__ = [
    "CONTRACTS_END",
    "CONTRACTS_FILE",
    "CONTRACTS_START",
    "FIELDS",
    "RECORD_SCHEMA",
    "Field",
    "Record",
    "check_record_keys",
    "contracts_table",
    "field_named",
    "record_created",
    "validate_record",
    "write_contracts",
]

Record = dict[str, Any]

#: Version of the ``metrics.json`` format this package reads and writes.
RECORD_SCHEMA: int = 2
#: The contributors' contract whose record table is generated from :data:`FIELDS`.
CONTRACTS_FILE = PROJECT_ROOT / "docs" / "CONTRACTS.md"
CONTRACTS_START = "<!-- fields:start -->"
CONTRACTS_END = "<!-- fields:end -->"
#: How to regenerate the table (named in every message about a stale CONTRACTS.md).
REGENERATE = "python -m loveda_utils.results.schema --write-contracts"

#: A field's type. ``fraction``: a number in [0, 1] (IoU values are fractions, not percent);
#: ``time``: an ISO 8601 string; ``object``: a JSON object (its keys in ``keys`` or ``fields``).
Kind = Literal[
    "int", "float", "fraction", "interval", "str", "bool", "time", "list[str]", "object"
]


@dataclass(frozen=True)
class Field:
    """One field of the record.

    ``keys``/``values``: an object with exactly these keys, each value of kind ``values`` or
    null. ``fields``: an object whose entries are themselves fields (checked like the record's).
    An object with neither holds free-form entries (``config``, ``versions``).
    """

    name: str
    kind: Kind
    meaning: str
    nullable: bool = False
    unit: str = ""
    choices: tuple[Any, ...] = ()
    keys: tuple[str, ...] = ()
    values: Kind | None = None
    fields: tuple[Field, ...] = ()
    #: The record format version that added the field: older records, written before it
    #: existed, stay valid without it (``metrics.json`` files are never rewritten).
    since: int = 1


def fields_of(schema: int) -> tuple[Field, ...]:
    """The top-level fields a record of format version ``schema`` holds."""
    return tuple(f for f in FIELDS if f.since <= schema)


_SCENE_KEYS = tuple(s.lower() for s in SCENES)
_NOT_TRAINED = "null when a checkpoint was only evaluated here"

#: The record's fields, in the order ``docs/CONTRACTS.md`` lists them.
FIELDS: tuple[Field, ...] = (
    Field("schema", "int", "record format version (records of every version up to this "
          "package's are read)", choices=tuple(range(1, RECORD_SCHEMA + 1))),
    Field("run_name", "str", "the run folder's name: `runs/<run_name>/`"),
    Field("run_group", "str", "`<model>-<mini|loveda>[-<urban|rural>]-<crop_size>px-<lr_schd>it` "
       "(the scene when trained on one domain only): runs of one group are repeats; the table "
       "keeps the newest. A Test-split run (predictions only, for the evaluation server) appends "
       "`-test`, so it never replaces a scored row"),
    Field("status", "str", "written only once the run completed", choices=("complete",)),
    Field("model", "str", "registry name (`loveda_utils/models/registry.py`)"),
    Field("method", "str", "the table's Method (from the registry entry)"),
    Field("backbone", "str", "the table's Backbone (from the registry entry)"),
    Field("pretrained", "str", "`none`, `imagenet`, a torchgeo weights name, or a file path"),
    Field("normalization", "str", "mean/std the model normalises its 0..255 input with; null "
       "when the model does not state it", nullable=True),
    Field("crop_size", "int", "training crop side", unit="px"),
    Field("lr_schd", "int", "training iterations (the checkpoint's global step when it was only "
       "evaluated here)"),
    Field("batch_size", "int", "training images per step on each device (MMSeg's per-GPU batch)"),
    Field("devices", "int", "training processes (devices) over all nodes: a step's global batch is "
          f"`batch_size` x `devices`; {_NOT_TRAINED}", nullable=True, since=2),
    Field("mem_gb", "float", "MMSeg's Mem: peak memory of training 4 images in fp32 at "
       "`crop_size`, whatever schedule the run used (a probe in a fresh process, "
       "`mem_protocol`; schema 1: the run's own training peak); null when not measured",
       nullable=True, unit="GiB"),
    Field("mem_source", "str", "how `mem_gb` was read: `torch.cuda.max_memory_allocated` on CUDA, "
       "`peak RSS` (peak resident memory of the probe process; schema 1: of the run) elsewhere; null "
       "when not measured",
       nullable=True),
    Field("mem_protocol", "object", "the setting `mem_gb` was measured at; null when not measured",
       nullable=True, since=2, fields=(
        Field("batch", "int", "training images per step (MMSeg: 4 per GPU)"),
        Field("crop", "int", "training crop side", unit="px"),
        Field("precision", "str", "Lightning precision of the probe", choices=("32-true",)),
        Field("steps", "int", "optimiser steps the peak was taken over"),
        Field("optimizer", "str", "optimiser of the probe (its state is in the peak)"),
        Field("cudnn_benchmark", "bool", "`torch.backends.cudnn.benchmark` during the probe "
              "(MMSeg trains with it on)"),
    )),
    Field("train_mem_gb", "float", "peak memory of this run's own training (its `batch_size` and "
       "`precision`; `torch.cuda.max_memory_allocated` on CUDA, the process's peak RSS "
       f"elsewhere); {_NOT_TRAINED}", nullable=True, unit="GiB", since=2),
    Field("fps", "float", "MMSeg's Inf time (`tools/analysis_tools/benchmark.py`): timed images / "
       "their total time, batch 1 on a `fps_size` px square, fp32, NCHW, cudnn.benchmark off; "
       "forward + resize + argmax timed with the device synchronised, normalisation outside "
       "the timer (schema 1: the median per-image fps under `amp`)", unit="images/s"),
    Field("fps_spread", "float", "interquartile range of the per-image fps of that timing",
       unit="images/s"),
    Field("fps_size", "int", "side of the square input `fps` was timed on", unit="px"),
    Field("fps_images", "int", "timed images (after `fps_warmup` untimed passes; MMSeg: 195 "
       "after 5)"),
    Field("fps_warmup", "int", "untimed passes before the timed images", since=2),
    Field("fps_fast", "float", "the `fps` timing under this package's inference settings "
       "(`fps_fast_settings`): a separate figure, not MMSeg's", unit="images/s", since=2),
    Field("fps_fast_spread", "float", "interquartile range of the per-image fps of `fps_fast`",
       unit="images/s", since=2),
    Field("fps_fast_settings", "object", "how `fps_fast` ran", since=2, fields=(
        Field("precision", "str", "`fp32` or the autocast dtype", choices=("fp32", "fp16", "bf16")),
        Field("channels_last", "bool", "model and input in channels-last memory format"),
        Field("cudnn_benchmark", "bool", "`torch.backends.cudnn.benchmark` during the timing"),
    )),
    Field("device", "str", "name of the device `fps` was timed on (the table's Device)"),
    Field("precision", "str", "Lightning precision of training (`32-true`, `16-mixed`, ...); "
       f"{_NOT_TRAINED}", nullable=True),
    Field("amp", "bool", "whether `fps` was timed under autocast (false from schema 2: MMSeg "
       "times fp32)"),
    Field("eval_amp", "str", "autocast dtype the evaluation ran in (`bfloat16`, `float16`); null: "
       "fp32, the default, from which the table's mIoU comes", nullable=True, since=2),
    Field("miou", "fraction", "mean IoU over the classes (`eval_mode` inference); null when no "
       "pixel was evaluated", nullable=True),
    Field("miou_ms_flip", "fraction", "mIoU with multi-scale + flip test-time augmentation; null "
       "when not run", nullable=True),
    Field("accuracy", "fraction", "overall pixel accuracy (MMSeg's aAcc); null when no pixel "
       "was scored (the Test split has no masks)", nullable=True),
    Field("mean_f1", "fraction", "mean F1 (MMSeg's mDice) over the classes; null when no pixel "
       "was scored", nullable=True),
    Field("per_class_iou", "object", "IoU per class; null for a class absent from both "
       "prediction and ground truth", keys=CLASS_NAMES, values="fraction"),
    Field("per_class_iou_ms_flip", "object", "`per_class_iou` with ms+flip; null when not run",
       nullable=True, keys=CLASS_NAMES, values="fraction"),
    Field("per_scene_miou", "object", "mIoU per scene; null for a scene not evaluated",
       keys=_SCENE_KEYS, values="fraction"),
    Field("per_scene_miou_ms_flip", "object", "`per_scene_miou` with ms+flip; null when not run",
       nullable=True, keys=_SCENE_KEYS, values="fraction"),
    Field("miou_ci", "interval", "bootstrap interval of `miou` over tiles (`bootstrap`); null "
       "when no pixel was evaluated", nullable=True, since=2),
    Field("miou_ms_flip_ci", "interval", "`miou_ci` of `miou_ms_flip`; null when not run",
       nullable=True, since=2),
    Field("per_scene_miou_ci", "object", "`miou_ci` of each scene's mIoU, over that scene's "
       "tiles; null for a scene not evaluated", keys=_SCENE_KEYS, values="interval", since=2),
    Field("bootstrap", "object", "how the intervals were drawn", fields=(
        Field("resamples", "int", "resamples of the tiles"),
        Field("seed", "int", "seed of numpy's default_rng that drew them"),
        Field("level", "float", "coverage of each interval, e.g. 0.95"),
        Field("unit", "str", "what a resample draws", choices=("tile",)),
        Field("interval", "str", "how the bounds are read off the resamples",
              choices=("percentile",)),
    ), since=2),
    Field("params_m", "float", "parameters (every tensor a checkpoint saves)", unit="millions"),
    Field("gmacs", "float", "multiply-adds of one forward pass at 1x3x`flops_size`x`flops_size`, "
       "counted as MMSeg's `get_flops` (mmengine) counts its \"FLOPs\": a multiply-add is one, "
       "plus mmengine's per-element terms for normalisation, upsampling and adaptive pooling",
       unit="1e9 multiply-adds", since=2),
    Field("gflops", "float", "`torch.utils.flop_counter` on the same pass: 2 per multiply-add of "
       "convolutions, linear layers, matrix products and attention, nothing else counted",
       unit="1e9 FLOPs, a multiply-add counted as 2"),
    Field("flops_size", "int", "side of the square input `gmacs` and `gflops` were counted at",
       unit="px"),
    Field("eval_mode", "str", "`whole`: each tile in one pass; `slide`: overlapping windows "
       "(`config.slide_window`, `config.slide_stride`)", choices=get_args(Mode)),
    Field("dataset", "object", "what was evaluated", fields=(
        Field("root", "str", "the data root, as resolved on the machine that ran"),
        Field("split", "str", "evaluated split", choices=SPLITS),
        Field("scenes", "list[str]", "evaluated scenes"),
        Field("n_images", "int", "evaluated tiles"),
        Field("synthetic", "bool", "true on the generated mini-LoveDA: never a LoveDA result"),
    )),
    Field("train_seconds", "float", "wall-clock training time, summed over the training "
       f"segments; null when a segment's time is unknown or {_NOT_TRAINED}", nullable=True,
       unit="s"),
    Field("train_segments", "int", "fits the training took: 1 in one go, one more per resume "
       f"of an interrupted run; {_NOT_TRAINED}", nullable=True, since=2),
    Field("resumed_from_step", "int", "the step the last training segment resumed from (its "
       "`last.ckpt`); null when trained in one go or only evaluated here", nullable=True,
       since=2),
    Field("eval_seconds", "float", "wall-clock time of the single-scale evaluation", nullable=True,
       unit="s"),
    Field("saved_predictions", "int", "prediction PNGs written under "
       "`predictions/<Split>/<Scene>/` (`config.save_predictions`), one per evaluated tile; "
       "null when none were saved", nullable=True, since=2),
    Field("final_loss", "float", f"training loss at the last step (of the last segment); {_NOT_TRAINED}",
       nullable=True),
    Field("checkpoint", "str", "the trained or evaluated checkpoint (relative to the run folder "
       "when inside it)", nullable=True),
    Field("config", "object", "the notebook parameters as run (also in `params.json`)"),
    Field("git_commit", "str", "the checkout's commit, `-dirty` when files differed from it; null "
       "outside a git checkout", nullable=True),
    Field("versions", "object", "{package: version} of the libraries in use"),
    Field("seed", "int", "random seed"),
    Field("created", "time", "when the record was written (UTC)"),
)  # fmt: skip

_BY_NAME = {f.name: f for f in FIELDS}


def field_named(name: str) -> Field:
    """The :class:`Field` called ``name`` (``"dataset.split"`` for a nested one)."""
    head, _, rest = name.partition(".")
    found = _BY_NAME[head]
    return next(f for f in found.fields if f.name == rest) if rest else found


# -- checking ------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


#: The JSON type each kind holds (fractions and times get their extra check below).
_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": _is_number,
    "fraction": _is_number,
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "time": lambda v: isinstance(v, str),
    "list[str]": lambda v: isinstance(v, list | tuple) and all(isinstance(s, str) for s in v),
    "object": lambda v: isinstance(v, dict),
    "interval": lambda v: isinstance(v, list | tuple) and len(v) == 2
    and all(_is_number(x) and 0.0 <= x <= 1.0 for x in v) and v[0] <= v[1],
}


def _kind_problem(value: Any, kind: Kind, where: str) -> str | None:
    """Why ``value`` (not None) is not of ``kind``, or None when it is."""
    if not _KIND_CHECKS[kind](value):
        return f"{where} is {type(value).__name__} {value!r:.40}, expected {kind}"
    if kind == "fraction" and not 0.0 <= value <= 1.0:
        return f"{where} = {value!r} is outside [0, 1] (IoU values are fractions, not percent)"
    if kind == "time":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return f"{where}={value!r} is not an ISO 8601 time"
    return None


def _key_problems(obj: Mapping[str, Any], fields: Sequence[Field], prefix: str) -> list[str]:
    names = [f.name for f in fields]
    problems = [f"missing field {prefix + n!r}" for n in names if n not in obj]
    unknown = [k for k in obj if k not in names]
    if unknown:
        problems.append(
            f"unknown field(s) {[prefix + str(k) for k in unknown]}: add them to FIELDS in "
            "loveda_utils/results/schema.py (then run " + REGENERATE + ") or stop writing them"
        )
    for f in fields:
        if f.fields and isinstance(obj.get(f.name), dict):
            problems += _key_problems(obj[f.name], f.fields, f"{prefix}{f.name}.")
    return problems


def _value_problems(obj: Mapping[str, Any], fields: Sequence[Field], prefix: str) -> list[str]:
    problems = []
    for f in fields:
        if f.name not in obj:
            continue  # reported by _key_problems
        where, value = prefix + f.name, obj[f.name]
        if value is None:
            if not f.nullable:
                problems.append(f"{where} is null, expected {f.kind}")
            continue
        problem = _kind_problem(value, f.kind, where)
        if problem:
            problems.append(problem)
            continue
        if f.choices and value not in f.choices:
            problems.append(f"{where} is {value!r}, expected one of {list(f.choices)}")
        if f.keys:
            missing = [k for k in f.keys if k not in value]
            if missing:
                problems.append(f"{where} lacks {missing} (expected keys {list(f.keys)})")
            extra = [k for k in value if k not in f.keys]
            if extra:
                problems.append(f"{where} has unknown keys {extra} (expected {list(f.keys)})")
            for key, item in value.items():
                if item is not None and f.values is not None:
                    problem = _kind_problem(item, f.values, f"{where}[{key!r}]")
                    problems += [problem] if problem else []
        if f.fields:
            problems += _value_problems(value, f.fields, f"{where}.")
    return problems


def validate_record(record: Any) -> list[str]:
    """Problems of a results record against :data:`FIELDS`: missing or unknown fields, wrong
    types, nulls where a value is required, fractions outside [0, 1], unexpected values.

    Keys starting with ``_`` (added by the reader, e.g. ``_run_dir``) are not record fields.

    Returns:
        One message per problem; an empty list means the record is valid.
    """
    if not isinstance(record, dict):
        return [f"a record must be a JSON object, got {type(record).__name__}"]
    schema = record.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool):
        return [f"schema is {schema!r}, expected a record format version 1..{RECORD_SCHEMA}"]
    if not 1 <= schema <= RECORD_SCHEMA:
        return [f"schema is {schema}, this version reads schemas 1..{RECORD_SCHEMA}: update the package"]
    fields = {k: v for k, v in record.items() if not str(k).startswith("_")}
    known = fields_of(schema)
    return _key_problems(fields, known, "") + _value_problems(fields, known, "")


def check_record_keys(record: Record) -> Record:
    """``record`` unchanged when its keys are exactly :data:`FIELDS`' (nested ones included).

    The record builder calls this, so a field added to the builder but not to the schema (or
    the other way round) fails where it is made, not in a reader later.

    Raises:
        RecordError: naming every missing and unknown key.
    """
    problems = _key_problems(record, FIELDS, "")
    if problems:
        raise RecordError("the results record does not match FIELDS: " + "; ".join(problems))
    return record


def record_created(record: Mapping[str, Any]) -> datetime:
    """The record's ``created`` as an aware datetime (naive times taken as UTC; unreadable:
    the earliest time, so such a record never wins "newest")."""
    try:
        when = datetime.fromisoformat(str(record.get("created")))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# -- the CONTRACTS.md table ---------------------------------------------------------------------


#: How a kind reads in the docs, where its name alone would not say it.
_KIND_TEXT = {
    "fraction": "float in [0, 1]",
    "interval": "[low, high], floats in [0, 1]",
    "time": "str, ISO 8601",
}


def _type_text(f: Field) -> str:
    if f.keys:
        keys = ", ".join(f"`{k}`" for k in f.keys)
        text = f"{{{keys}: {_KIND_TEXT.get(f.values or '', f.values)}/null}}"
    elif f.fields:
        text = "{" + ", ".join(sub.name for sub in f.fields) + "}"
    else:
        text = _KIND_TEXT.get(f.kind, f.kind)
    if f.choices:
        text += " (" + " or ".join(f"`{c}`" for c in f.choices) + ")"
    return text + ("/null" if f.nullable else "")


def _rows(fields: Sequence[Field], prefix: str = "") -> list[str]:
    rows = []
    for f in fields:
        meaning = f.meaning + (f" (since schema {f.since})" if f.since > 1 else "")
        cells = [f"`{prefix}{f.name}`", _type_text(f), f.unit, meaning]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        rows += _rows(f.fields, f"{prefix}{f.name}.")
    return rows


def contracts_table() -> str:
    """The markdown table of :data:`FIELDS` that ``docs/CONTRACTS.md`` holds between markers."""
    lines = [
        f"<!-- generated from FIELDS in loveda_utils/results/schema.py by `{REGENERATE}`; "
        "do not edit by hand -->",
        "",
        "| field | type | unit | meaning |",
        "|---|---|---|---|",
        *_rows(FIELDS),
    ]
    return "\n".join(lines)


def contracts_section(path: str | Path = CONTRACTS_FILE) -> str:
    """The table currently between the markers of ``path`` (to compare with :func:`contracts_table`)."""
    path = Path(path)
    return section_text(path.read_text(encoding="utf-8"), CONTRACTS_START, CONTRACTS_END, path)


def write_contracts(path: str | Path = CONTRACTS_FILE) -> bool:
    """Rewrite the field table of ``path`` from :data:`FIELDS`; True when it changed."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8")
    new = replace_section(text, CONTRACTS_START, CONTRACTS_END, contracts_table(), path)
    if new == text:
        return False
    write_text_atomic(path, new)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loveda_utils.results.schema",
        description="The results record's schema (FIELDS) and its table in docs/CONTRACTS.md.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--write-contracts",
        action="store_true",
        help="rewrite the field table of docs/CONTRACTS.md from FIELDS",
    )
    action.add_argument(
        "--check-contracts",
        action="store_true",
        help="exit 1 when docs/CONTRACTS.md's field table differs from FIELDS",
    )
    parser.add_argument("--contracts", default=str(CONTRACTS_FILE), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    path = Path(args.contracts)
    if args.write_contracts:
        changed = write_contracts(path)
        print(f"{path}: {'updated' if changed else 'already up to date'}")
        return 0
    if contracts_section(path) != contracts_table():
        print(f"{path}: the field table differs from FIELDS; run {REGENERATE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
