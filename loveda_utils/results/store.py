"""Run folders on disk: their names, claiming them, reading their records, finding runs to resume.

Layout (``docs/CONTRACTS.md``, "Run folders and results records")::

    <results_dir>/runs/<run_name>/metrics.json      the record (schema: results/schema.py)
                                 /params.json       the parameters as run
                                 /03_benchmark.ipynb the executed notebook (suite runs)
                                 /checkpoints/last.ckpt

A folder is claimed with ``mkdir(exist_ok=False)`` and never reused once it holds a record; a
folder without one belongs to an interrupted run, which may resume in it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..data.classes import SCENES, normalize_scenes
from ..errors import ConfigError
from .schema import Record, record_created, validate_record

__all__ = [
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "NOTEBOOK_FILE",
    "PARAMS_FILE",
    "VISUALS_DIR",
    "claim_run_dir",
    "completed_runs",
    "load_records",
    "relative_to_results",
    "run_group_for",
    "unfinished_group_run",
    "unfinished_run",
]

#: File names inside a run folder.
METRICS_FILE = "metrics.json"
PARAMS_FILE = "params.json"
NOTEBOOK_FILE = "03_benchmark.ipynb"
CHECKPOINT_FILE = Path("checkpoints") / "last.ckpt"
#: Predictions of the fixed comparison tiles: ``visuals/<Split>/<Scene>/<name>.png``.
VISUALS_DIR = "visuals"
RUNS_DIR = "runs"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def run_group_for(
    model: str,
    synthetic: bool,
    crop_size: int,
    lr_schd: int,
    train_scenes: str | list[str] | tuple[str, ...] = "both",
) -> str:
    """``<model>-<mini|loveda>[-<scene>]-<crop_size>px-<lr_schd>it``: runs of one group are repeats.

    A model trained on one domain only (``train_scenes``) has that scene in its group, so that a
    source-only run is never taken for (or reused as) a run trained on both; trained on both,
    the group keeps the name it has always had, which the records written before single-domain
    runs existed carry.

    >>> run_group_for("deeplabv3plus_resnet50", False, 512, 80000)
    'deeplabv3plus_resnet50-loveda-512px-80000it'
    >>> run_group_for("deeplabv3plus_resnet50", False, 512, 80000, train_scenes="urban")
    'deeplabv3plus_resnet50-loveda-urban-512px-80000it'
    """
    scenes = normalize_scenes(train_scenes)
    domain = "" if set(scenes) == set(SCENES) else "".join(f"-{s.lower()}" for s in scenes)
    return f"{model}-{'mini' if synthetic else 'loveda'}{domain}-{int(crop_size)}px-{int(lr_schd)}it"


def _numbered(base: str, attempt: int) -> str:
    """The ``attempt``-th folder name for ``base``: ``base``, ``base-r2``, ``base-r3``, ..."""
    return base if attempt == 1 else f"{base}-r{attempt}"


def _attempt(name: str, base: str) -> int | None:
    """Inverse of :func:`_numbered`: ``attempt`` when ``name`` is one of ``base``'s names."""
    if name == base:
        return 1
    head, sep, number = name.rpartition("-r")
    return int(number) if sep and head == base and number.isdigit() and int(number) > 1 else None


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
    runs = Path(results_dir) / RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    attempt = 1
    while True:
        candidate = runs / _numbered(base, attempt)
        try:
            candidate.mkdir(exist_ok=False)
            return candidate
        except FileExistsError:
            attempt += 1


# -- the resume rule -------------------------------------------------------------------------------


def unfinished_run(results_dir: str | os.PathLike[str], run_name: str | None) -> Path | None:
    """``runs/<run_name>`` when it exists without a record: this run's own folder (claimed
    beforehand by the suite, or left by an interrupted run) to resume in. A folder with a record
    is never written again, so then None."""
    if not run_name:
        return None
    folder = Path(results_dir) / RUNS_DIR / run_name
    return folder if folder.is_dir() and not (folder / METRICS_FILE).exists() else None


def unfinished_group_run(results_dir: str | os.PathLike[str], run_group: str) -> Path | None:
    """The newest folder of ``run_group`` (``<group>``, ``<group>-r2``, ...) when it has no
    record: an interrupted run to resume. None when the newest one finished (or none exists)."""
    runs = Path(results_dir) / RUNS_DIR
    numbered = [
        (n, p) for p in (runs.iterdir() if runs.is_dir() else ())
        if p.is_dir() and (n := _attempt(p.name, run_group)) is not None
    ]  # fmt: skip
    if not numbered:
        return None
    newest = max(numbered)[1]
    return None if (newest / METRICS_FILE).exists() else newest


# -- reading records -------------------------------------------------------------------------------


def relative_to_results(path: Path, results_dir: Path) -> str:
    """``path`` as written below ``results_dir`` (``runs/<name>/metrics.json``), so messages that
    end up in tables and READMEs hold no local absolute path."""
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(results_dir))).as_posix()
    except ValueError:  # another drive (Windows): the name is all that is safe to show
        return Path(path).name


def _read_record(path: Path, results_dir: Path) -> tuple[Record | None, str | None]:
    """``(record, None)`` for a valid ``metrics.json``, else ``(None, problem naming the file)``."""
    where = relative_to_results(path, results_dir)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{where}: unreadable ({type(err).__name__})"
    except json.JSONDecodeError as err:
        return None, f"{where}: not valid JSON ({err})"
    problems = validate_record(record)
    if problems:
        return None, f"{where}: " + "; ".join(problems)
    record["_run_dir"] = path.parent
    return record, None


def _record_paths(results_dir: Path) -> list[Path]:
    return sorted((results_dir / RUNS_DIR).glob(f"*/{METRICS_FILE}"))


def load_records(results_dir: str | os.PathLike[str]) -> tuple[list[Record], list[str]]:
    """Read every ``<results_dir>/runs/*/metrics.json``.

    Returns:
        ``(records, problems)``: the valid records, each with ``_run_dir`` (its folder) added,
        and one message per damaged record (bad JSON, missing fields, wrong schema, ...) naming
        the file relative to ``results_dir`` (``runs/<name>/metrics.json``) and what is wrong.
        A damaged record never raises.

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
        record, problem = _read_record(path, results_dir)
        if record is not None:
            records.append(record)
        elif problem is not None:
            problems.append(problem)
    return records, problems


def completed_runs(results_dir: str | os.PathLike[str], run_group: str) -> list[Path]:
    """Run folders of ``run_group`` holding a valid ``metrics.json``, oldest first.

    Runs without a record (crashed, still running) or with a damaged one do not count: the
    suite may repeat them.
    """
    results_dir = Path(results_dir)
    found = []
    for path in _record_paths(results_dir):
        record, _ = _read_record(path, results_dir)
        if record is not None and record["run_group"] == run_group:
            found.append((record_created(record), path.parent.name, path.parent))
    return [p for *_, p in sorted(found)]
