"""Run folders on disk: their names, claiming them, reading their records, finding runs to resume.

Layout (``docs/CONTRACTS.md``, "Run folders and results records")::

    <results_dir>/runs/<run_name>/metrics.json      the record (schema: results/schema.py)
                                 /params.json       the parameters as run
                                 /03_benchmark.ipynb the executed notebook (suite runs)
                                 /checkpoints/last.ckpt
                                 /.run.lock         the claim (below)

A run's name is a plain folder name (:func:`check_run_name`), so its folder is a direct child of
``<results_dir>/runs/``; a ``runs/<name>`` that is a symbolic link or a file is refused, never
followed. (``runs/`` itself, and ``results_dir``, may be links: that is the results folder's
layout, which its owner chose.)

A run owns its folder by holding an exclusive ``fcntl.flock`` on ``.run.lock`` inside it for as
long as it runs: the kernel drops the lock when the process ends, however it ends, so a folder
whose lock nobody holds and that has no record belongs to a run that died, and the next run of
that name resumes in it. A folder with a record is never written again. Claims go through
:func:`claim_run_dir` (the notebook, the suite, a SLURM job) and :func:`claim_folder` (``train
--run-dir``, a folder the user names).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..data.classes import SCENES, normalize_scenes, normalize_split
from ..errors import ConfigError
from .schema import Record, record_created, validate_record

__all__ = [
    "CHECKPOINT_FILE",
    "CLAIM_ENV",
    "LOCK_FILE",
    "METRICS_FILE",
    "NOTEBOOK_FILE",
    "PARAMS_FILE",
    "PREDICTIONS_ONLY_GROUP",
    "VISUALS_DIR",
    "RunClaim",
    "check_output_folder",
    "check_run_name",
    "claim_folder",
    "claim_run_dir",
    "completed_runs",
    "held_claim",
    "load_records",
    "relative_to_results",
    "release_run_dir",
    "run_group_for",
]

#: File names inside a run folder.
METRICS_FILE = "metrics.json"
PARAMS_FILE = "params.json"
NOTEBOOK_FILE = "03_benchmark.ipynb"
CHECKPOINT_FILE = Path("checkpoints") / "last.ckpt"
#: Predictions of the fixed comparison tiles: ``visuals/<Split>/<Scene>/<name>.png``.
VISUALS_DIR = "visuals"
RUNS_DIR = "runs"
#: The lock file a run holds while it runs (kept afterwards: deleting a lock file races).
LOCK_FILE = ".run.lock"
#: Set in the environment of a process that runs inside a folder claimed by its parent (the
#: suite's notebook): the claim's token, by which the child recognises the claim as its own.
CLAIM_ENV = "LOVEDA_RUN_CLAIM"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")
#: File systems cap a name at 255 bytes; this leaves room for the ``-rN`` suffixes.
MAX_NAME_LENGTH = 200


#: Appended to the run group of a Test-split run: its predictions are for the evaluation
#: server, it has no scores, and it must not replace (nor be taken for) the scored run of its
#: model in the table and in the suite's plan.
PREDICTIONS_ONLY_GROUP = "-test"


def run_group_for(
    model: str,
    synthetic: bool,
    crop_size: int,
    lr_schd: int,
    train_scenes: str | list[str] | tuple[str, ...] = "both",
    eval_split: str = "Val",
) -> str:
    """``<model>-<mini|loveda>[-<scene>]-<crop_size>px-<lr_schd>it[-test]``: runs of one group
    are repeats.

    A model trained on one domain only (``train_scenes``) has that scene in its group, so that a
    source-only run is never taken for (or reused as) a run trained on both; trained on both,
    the group keeps the name it has always had, which the records written before single-domain
    runs existed carry. A run evaluating the Test split (``eval_split``, predictions without
    scores) ends in :data:`PREDICTIONS_ONLY_GROUP`.

    >>> run_group_for("deeplabv3plus_resnet50", False, 512, 80000)
    'deeplabv3plus_resnet50-loveda-512px-80000it'
    >>> run_group_for("deeplabv3plus_resnet50", False, 512, 80000, train_scenes="urban")
    'deeplabv3plus_resnet50-loveda-urban-512px-80000it'
    >>> run_group_for("deeplabv3plus_resnet50", False, 512, 80000, eval_split="test")
    'deeplabv3plus_resnet50-loveda-512px-80000it-test'
    """
    scenes = normalize_scenes(train_scenes)
    domain = "" if set(scenes) == set(SCENES) else "".join(f"-{s.lower()}" for s in scenes)
    test = PREDICTIONS_ONLY_GROUP if normalize_split(eval_split) == "Test" else ""
    return (f"{model}-{'mini' if synthetic else 'loveda'}{domain}-{int(crop_size)}px-"
            f"{int(lr_schd)}it{test}")


def _numbered(base: str, attempt: int) -> str:
    """The ``attempt``-th folder name for ``base``: ``base``, ``base-r2``, ``base-r3``, ..."""
    return base if attempt == 1 else f"{base}-r{attempt}"


def _attempt(name: str, base: str) -> int | None:
    """Inverse of :func:`_numbered`: ``attempt`` when ``name`` is one of ``base``'s names."""
    if name == base:
        return 1
    head, sep, number = name.rpartition("-r")
    return int(number) if sep and head == base and number.isdigit() and int(number) > 1 else None


# -- validation ------------------------------------------------------------------------------------


def check_run_name(name: object, arg: str = "run_name") -> str:
    """``name`` when it is a plain folder name: letters, digits and ``. _ + = -``, starting with a
    letter or digit, at most :data:`MAX_NAME_LENGTH` characters. So no ``..``, no separator, no
    absolute path and no empty name can place a run outside ``<results_dir>/runs/``.

    Raises:
        ConfigError: naming ``arg`` and the rule.
    """
    if isinstance(name, str) and _NAME.fullmatch(name) and len(name) <= MAX_NAME_LENGTH:
        return name
    raise ConfigError(
        f"{arg}={name!r} is not a plain folder name: use letters, digits and . _ + = - (no "
        f"slashes or spaces, not empty, not starting with a dot, at most {MAX_NAME_LENGTH} "
        f"characters); the run's folder is <results_dir>/{RUNS_DIR}/<name>"
    )


def check_output_folder(path: str | os.PathLike[str] | None, arg: str) -> Path:
    """``path`` made absolute (against the current directory), after checking that it is a
    folder this process can write in, or can become one. Creates nothing.

    Raises:
        ConfigError: naming ``arg`` when ``path`` is empty, when it or one of its parents is a
            file (or a broken link), or when the nearest existing folder is not writable.
    """
    if path is None or not os.fspath(path).strip():
        raise ConfigError(f"{arg} is empty: pass a folder path")
    absolute = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    existing = absolute
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        what = "a broken symbolic link" if not existing.exists() else "a file"
        raise ConfigError(f"{arg}={os.fspath(path)!r}: {existing} is {what}, not a folder; pass a "
                          "folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{arg}={os.fspath(path)!r}: {existing} is not writable; pass a folder "
                          "you can write in, or change its permissions")
    return absolute


def _make_folder(folder: Path, arg: str, shown: str) -> bool:
    """``mkdir`` ``folder`` (and its parents); True when this call created it. An existing link
    or file is left alone (the caller refuses it)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir()
        return True
    except FileExistsError:
        return False
    except OSError as err:
        raise ConfigError(f"{arg}={shown!r}: cannot create {folder} ({err.strerror}); pass a "
                          "folder you can write in") from None


# -- claims ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """Who holds a folder's lock, as its lock file says."""

    pid: int | None
    host: str
    since: str
    token: str

    def __str__(self) -> str:
        if self.pid is None:
            return "another process (its lock file names no owner yet)"
        return f"pid {self.pid} on {self.host} since {self.since}"


@dataclass
class RunClaim:
    """A folder this process owns: it holds the folder's lock (or its parent does, for a child
    started with :meth:`child_env`), until :meth:`release` or the end of the process."""

    path: Path
    token: str
    #: The folder held files of an earlier attempt (its ``last.ckpt`` is resumed).
    resumed: bool
    _fd: int | None  # None: the lock is the parent's

    @property
    def adopted(self) -> bool:
        """The lock is held by the parent process that started this one (:meth:`child_env`)."""
        return self._fd is None

    def child_env(self) -> dict[str, str]:
        """Environment for a child process that runs inside this folder (the suite's notebook):
        its own claim of the folder then takes this one instead of being refused."""
        return {CLAIM_ENV: self.token}

    def pass_fds(self) -> tuple[int, ...]:
        """The lock's descriptor, for ``subprocess``'s ``pass_fds``: the child then holds the
        lock too, so it stays held while the child runs even if this process dies."""
        return () if self._fd is None else (self._fd,)

    def release(self) -> None:
        with _HELD_LOCK:
            _HELD.pop(self.path, None)
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


#: The claims this process holds, by folder (each lock is one open file: two claims of a folder
#: in one process would lock each other out).
_HELD: dict[Path, RunClaim] = {}
_HELD_LOCK = threading.Lock()


def held_claim(folder: str | os.PathLike[str]) -> RunClaim | None:
    """This process's claim of ``folder``, if it holds one."""
    with _HELD_LOCK:
        return _HELD.get(Path(os.path.abspath(folder)))


def release_run_dir(folder: str | os.PathLike[str]) -> None:
    """Give up this process's claim of ``folder`` (if any); the run in it is over."""
    claim = held_claim(folder)
    if claim is not None:
        claim.release()


def _read_owner(fd: int) -> Owner:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return Owner(int(info["pid"]), str(info["host"]), str(info["since"]), str(info["token"]))
    except (OSError, ValueError, KeyError, TypeError):  # being written, or not ours
        return Owner(None, "", "", "")


def _lock(folder: Path, arg: str, shown: str, follow: bool = False) -> RunClaim | Owner:
    """Take ``folder``'s lock without waiting: the claim, or the live owner holding the lock.

    The folder is opened with ``O_NOFOLLOW`` (unless ``follow``) and the lock file is opened
    through it, also without following a link: a link put in place of either is refused, never
    written through.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | (0 if follow else os.O_NOFOLLOW)
    try:
        dir_fd = os.open(folder, flags)
        try:
            fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise ConfigError(f"{arg}={shown!r}: cannot use {folder} as a run folder ({err.strerror}); "
                          "a run folder must be a real, writable folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(fd)
        os.close(fd)
        if owner.token and owner.token == os.environ.get(CLAIM_ENV):  # our parent's claim
            return _register(RunClaim(folder, owner.token, _has_files(folder), None))
        return owner
    except OSError as err:
        os.close(fd)
        raise ConfigError(f"{arg}={shown!r}: cannot lock {folder / LOCK_FILE} ({err.strerror}); "
                          "put the results on a file system with file locks") from None
    token = uuid.uuid4().hex
    info = {"pid": os.getpid(), "host": socket.gethostname(), "token": token,
            "since": datetime.now(UTC).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    return _register(RunClaim(folder, token, _has_files(folder), fd))


def _register(claim: RunClaim) -> RunClaim:
    with _HELD_LOCK:
        _HELD[claim.path] = claim
    return claim


def _has_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides its lock file."""
    try:
        return any(entry.name != LOCK_FILE for entry in os.scandir(folder))
    except FileNotFoundError:  # removed meanwhile
        return False


def _refuse_link_or_file(folder: Path, arg: str, shown: str) -> None:
    if folder.is_symlink():
        raise ConfigError(
            f"{arg}={shown!r}: {folder} is a symbolic link (to {os.readlink(folder)}); a run "
            "folder must be a real folder inside runs/: remove the link or pick another name"
        )
    if os.path.lexists(folder) and not folder.is_dir():
        raise ConfigError(f"{arg}={shown!r}: {folder} is a file, not a run folder; remove it or "
                          "pick another name")


def claim_run_dir(
    results_dir: str | os.PathLike[str],
    run_group: str,
    run_name: str | None = None,
    *,
    resume: bool = False,
) -> Path:
    """Claim a folder ``<results_dir>/runs/<name>`` for one run and return it (absolute).

    ``name`` is ``run_name`` (default: ``run_group``) or one of its numbered attempts
    ``<name>-r2``, ``<name>-r3``, ..., taken in this order:

    1. the newest attempt, when it has no record and no live run holds it, if ``resume`` (an
       interrupted run resumes in it) or if it is empty;
    2. an older attempt that is empty (a claim that died before writing anything) and unheld;
    3. the next number.

    Empty means nothing but the lock file. A folder with a record is never claimed again; one
    another live process holds is passed over, except that with an explicit ``run_name`` the
    newest attempt held by a live run is refused, naming the owner (the user asked for that
    folder). Folders this process holds are its own when resuming. The claim is held until
    :func:`release_run_dir` or the end of the process.

    A run started by another process that planned its folder (the suite's notebook, a SLURM job)
    claims it again with that ``run_name`` and ``resume=True``: it takes the folder over when its
    environment carries the planner's :meth:`RunClaim.child_env`, or resumes it once the planner
    let go.

    Raises:
        ConfigError: the name is not a plain folder name, ``results_dir`` is a file or not
            writable, ``runs/<name>`` is a link or a file, or (explicit ``run_name``) another
            live run holds the folder.
    """
    arg = "run_name" if run_name is not None else "run_group"
    base = check_run_name(run_name if run_name is not None else run_group, arg)
    results = check_output_folder(results_dir, "results_dir")
    runs = results / RUNS_DIR
    if os.path.lexists(runs) and not runs.is_dir():
        raise ConfigError(f"results_dir={os.fspath(results_dir)!r}: {runs} is a file; runs go in "
                          "a folder of that name: remove the file or pass another results_dir")
    _make_folder(runs, "results_dir", os.fspath(results_dir))
    numbers = sorted(n for entry in os.scandir(runs) if (n := _attempt(entry.name, base)) is not None)
    first = max(numbers[-1] if numbers else 1, 1)
    older = [n for n in numbers if n < first]
    for attempt in itertools.chain([first], older, itertools.count(first + 1)):
        folder = runs / _numbered(base, attempt)
        _refuse_link_or_file(folder, arg, base)
        if (folder / METRICS_FILE).exists() or (attempt < first and _has_files(folder)):
            continue
        created = _make_folder(folder, arg, base)
        resumable = resume and attempt == first
        ours = held_claim(folder)
        if ours is not None:
            if resumable:
                return ours.path
            continue  # another run of this process
        outcome = _lock_new(folder, arg, base, created)
        if isinstance(outcome, Owner):
            if run_name is not None and attempt == first:
                raise ConfigError(
                    f"run_name={run_name!r}: {folder} is in use by a live run ({outcome}); wait "
                    "for it to finish, or pick another run_name"
                )
            continue
        if outcome.adopted:  # the folder our parent claimed for us
            return outcome.path
        if not (folder / METRICS_FILE).exists() and (created or resumable or not outcome.resumed):
            return outcome.path
        outcome.release()  # finished meanwhile, or an abandoned attempt not ours to resume
    raise AssertionError("unreachable")  # itertools.count never ends


def _lock_new(folder: Path, arg: str, shown: str, created: bool) -> RunClaim | Owner:
    """:func:`_lock` on a folder this call may just have created, which it removes again when
    the lock cannot be taken at all (so a failed claim leaves no empty folder behind)."""
    try:
        return _lock(folder, arg, shown)
    except ConfigError:
        if created:
            (folder / LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def claim_folder(path: str | os.PathLike[str], arg: str = "--run-dir") -> Path:
    """Claim a folder the user named (``train --run-dir``): created when missing, resumed when
    it exists; the path is the user's own (links in it are followed), but it must be, or become,
    a writable folder. Held until :func:`release_run_dir` or the end of the process.

    Raises:
        ConfigError: ``path`` is a file, lies under one, is not writable, or another live run
            holds it.
    """
    folder = check_output_folder(path, arg)
    if os.path.lexists(folder) and not folder.is_dir():
        raise ConfigError(f"{arg}={os.fspath(path)!r} is a file; pass a folder")
    _make_folder(folder, arg, os.fspath(path))
    outcome = held_claim(folder) or _lock(folder, arg, os.fspath(path), follow=True)
    if isinstance(outcome, Owner):
        raise ConfigError(f"{arg}={os.fspath(path)!r} is in use by a live run ({outcome}); wait for "
                          "it to finish, or pass another folder")
    return outcome.path


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
