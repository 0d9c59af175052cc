"""Fetching pretrained weights into the caches the model loader reads: the one place that downloads.

``python -m loveda_utils fetch-weights`` (``loveda_utils/cli/weights.py``) calls :func:`fetch`, and
:func:`check`, :func:`export_files` and :func:`import_files` for its ``--check``, ``--to`` and
``--from``. Which files a model needs and where the loader looks for them comes from one place,
:func:`loveda_utils.models.weights.weight_files`, which the loader's missing-file error uses too.

Sources and their layout
------------------------
By default each file comes from where it is published (``WeightFile.url``: download.pytorch.org,
the Hugging Face Hub; ``HF_ENDPOINT`` moves the Hub). A mirror (``--mirror URL``), a folder
written by ``--to DIR`` and a folder read by ``--from DIR`` share one layout below their root::

    torch/hub/checkpoints/<file>                  torch hub files (torchvision, torchgeo)
    hf/<repo_id>/resolve/<revision>/<filename>    Hugging Face files (smp encoders)
    SHA256SUMS                                    optional, "<sha256>  <path>" lines (sha256sum)

so a ``--to`` folder served by ``python -m http.server`` is a mirror.

Where files go
--------------
Torch hub files go to ``torch.hub.get_dir()/checkpoints/<file>``. Hugging Face files go where
``huggingface_hub`` puts them: the content in ``<HF cache>/models--<org>--<name>/blobs/<sha256>``
and ``snapshots/<revision>/<filename>`` a relative symlink to it (the content itself where
symlinks are refused). No ``refs/`` entry is written: the revisions are commits, which the Hub
cache finds in ``snapshots/`` directly (``refs/<branch>`` only maps branch names to commits).

A download goes to a ``.part`` file beside its destination (in ``blobs/`` for the Hub cache); an
interrupted one is resumed with an HTTP ``Range`` request, in the same run (``retries``) or the
next. The complete file is verified, synced to disk and renamed into place, so the loader never
sees a partial or unverified file.

Verification
------------
* torch hub file names carry a SHA-256 prefix (``resnet50-0676ba61.pth``): the file's SHA-256
  must start with it, as ``torch.hub.load_state_dict_from_url(check_hash=True)`` checks.
* A full SHA-256 and a size are checked when known: the Hub sends them for its large files as
  ``X-Linked-Etag``/``X-Linked-Size`` headers on the resolve URL (read by a ``HEAD`` request);
  a mirror or a ``--from`` folder gives them in ``SHA256SUMS``; a file already in the Hub cache
  is named by its SHA-256 in ``blobs/``.
* Always: a ``.safetensors`` file must open with ``safetensors`` (which checks that its header
  is well formed and its tensors fill the file exactly); a file with no hash known at all must
  load with ``torch.load(weights_only=True)``.

A file that fails is deleted, ``.part`` included, and its report says so.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import shutil
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.error import URLError
from urllib.parse import quote, urlparse

from ..errors import ConfigError, check_int
from ..files import atomic_output, write_text_atomic
from .caches import WeightFile, find_weight_file
from .download import (
    CHUNK,
    SHA256_HEX,
    TIMEOUT,
    USER_AGENT,
    Interrupted,
    Unavailable,
    download,
    hub_metadata,
    read_sums,
)
from .weights import weight_files

__all__ = [
    "SUMS_FILE",
    "FileReport",
    "check",
    "export_files",
    "fetch",
    "file_label",
    "format_table",
    "import_files",
    "layout_path",
    "needed_files",
    "summary",
]

#: The checksum file of a mirror or an exported folder (``sha256sum`` format).
SUMS_FILE = "SHA256SUMS"
#: Statuses meaning the file is now where the loader reads it (or, for ``exported``, copied out).
OK_STATUSES = frozenset({"present", "fetched", "imported", "exported"})


Log = Callable[[str], object]


@dataclass(frozen=True)
class FileReport:
    """What happened to one file: ``present``, ``missing``, ``corrupt``, ``fetched``,
    ``imported``, ``exported`` or ``failed``; ``detail`` says why or from where."""

    file: WeightFile
    status: str
    detail: str = ""
    size: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES


# --------------------------------------------------------------------------- what and where


def needed_files(models: Iterable[str], pretrained: str = "default") -> list[WeightFile]:
    """Every file the ``models`` need for ``pretrained``, one entry per model and file."""
    return [file for name in dict.fromkeys(models) for file in weight_files(name, pretrained)]


def layout_path(file: WeightFile) -> str:
    """``file``'s path below a mirror or export root (the layout in the module docstring)."""
    if file.hf_file is not None:
        repo_id, filename, revision = file.hf_file
        return f"hf/{repo_id}/resolve/{revision}/{filename}"
    return f"torch/hub/checkpoints/{file.path.name}"


def file_label(file: WeightFile) -> str:
    """A short name for tables: the torch hub file name, or ``<repo_id>/<filename>``."""
    return file.path.name if file.hf_file is None else f"{file.hf_file[0]}/{file.hf_file[1]}"


def _unique(files: Iterable[WeightFile]) -> list[WeightFile]:
    """One entry per destination, in order: several models often share one backbone file."""
    first: dict[Path, WeightFile] = {}
    for file in files:
        first.setdefault(file.path, file)
    return list(first.values())


def _hf_repo_dir(file: WeightFile) -> Path:
    """``models--<org>--<name>`` of a Hub file (``snapshots/<revision>/<filename>`` below it)."""
    assert file.hf_file is not None
    depth = len(PurePosixPath(file.hf_file[1]).parts)
    return file.path.parents[depth + 1]


def _part_path(file: WeightFile) -> Path:
    if file.hf_file is None:
        return file.path.with_name(file.path.name + ".part")
    _, filename, revision = file.hf_file
    # In blobs/, where huggingface_hub keeps its own incomplete downloads, not in snapshots/.
    return _hf_repo_dir(file) / "blobs" / f"{revision}.{filename.replace('/', '--')}.part"


# --------------------------------------------------------------------------- verification


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(
    file: WeightFile, path: Path, sha256: str | None = None, size: int | None = None
) -> tuple[str, str | None]:
    """``(sha256 of path, problem or None)`` against everything known about ``file``."""
    actual = _sha256(path)
    length = path.stat().st_size
    if size is not None and length != size:
        return actual, f"{length} bytes where {size} were expected"
    if file.sha256_prefix and not actual.startswith(file.sha256_prefix):
        return actual, (
            f"SHA-256 {actual[:16]}... does not start with {file.sha256_prefix}, the hash in "
            "its name"
        )
    if sha256 is not None and actual != sha256:
        return actual, f"SHA-256 {actual[:16]}... is not the expected {sha256[:16]}..."
    if file.path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # noqa: BLE001 - any failure means "not a safetensors file"
            return actual, f"not a readable safetensors file ({type(exc).__name__}: {exc})"
    elif not file.sha256_prefix and sha256 is None:
        import torch

        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means "not a state dict"
            return actual, f"not a readable torch file ({type(exc).__name__}: {exc})"
    return actual, None


def _verify_cached(file: WeightFile, found: Path) -> str | None:
    """The problem with a file already in a cache, or None."""
    blob = found.resolve().name  # the Hub cache names its blobs by their SHA-256
    return _verify(file, found, blob if SHA256_HEX.fullmatch(blob) else None)[1]


def _remove_cached(found: Path) -> None:
    """Delete a corrupt cached file: a Hub snapshot link together with its blob."""
    content = found.resolve()
    found.unlink()
    content.unlink(missing_ok=True)


# --------------------------------------------------------------------------- placing


def _install(file: WeightFile, part: Path, sha256: str) -> Path:
    """Rename the verified ``part`` into the place the loader reads (see the module docstring)."""
    file.path.parent.mkdir(parents=True, exist_ok=True)
    if file.hf_file is None:
        os.replace(part, file.path)
        return file.path
    blob = _hf_repo_dir(file) / "blobs" / sha256
    os.replace(part, blob)
    link = file.path.with_name(f".{file.path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        link.symlink_to(os.path.relpath(blob, file.path.parent))
    except OSError:  # no symlinks here (e.g. Windows without developer mode): the content
        os.replace(blob, file.path)
        return file.path
    os.replace(link, file.path)
    return file.path


def _sync(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _finish(
    file: WeightFile, part: Path, source: str, status: str, sha256: str | None, size: int | None
) -> FileReport:
    """Verify the complete ``part`` and place it, or delete it and say why."""
    digest, problem = _verify(file, part, sha256, size)
    if problem is not None:
        part.unlink(missing_ok=True)
        detail = f"{problem}; the file from {source} was deleted, nothing placed in the cache"
        return FileReport(file, "failed", detail)
    _sync(part)
    path = _install(file, part, digest)
    return FileReport(file, status, f"from {source}, SHA-256 {digest[:12]}", path.stat().st_size)


# --------------------------------------------------------------------------- downloading


def _mirror_sums(mirror: str) -> dict[str, str]:
    request = urllib.request.Request(f"{mirror}/{SUMS_FILE}", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            return read_sums(reply.read().decode("utf-8", "replace"))
    except (URLError, OSError, http.client.HTTPException):
        return {}  # a mirror without SHA256SUMS: the other checks still apply


def _mirror_root(mirror: str) -> str:
    if urlparse(mirror).scheme not in ("http", "https") or not urlparse(mirror).netloc:
        raise ConfigError(f"--mirror {mirror!r}: give an http(s) URL, e.g. http://host:8000")
    return mirror.rstrip("/")


def fetch(
    files: Iterable[WeightFile],
    mirror: str | None = None,
    *,
    retries: int = 2,
    progress: bool = True,
    log: Log | None = None,
) -> list[FileReport]:
    """Download every file not yet in its cache; one report per distinct file.

    Args:
        files: What to fetch (:func:`needed_files`).
        mirror: Root URL of a mirror in the layout of the module docstring; None: the origin.
        retries: How many times an interrupted download resumes within this call.
        progress: A progress bar per file on stderr (tqdm; off when stderr is not a terminal).
        log: Called with one line per file as it finishes (e.g. ``print``).
    """
    check_int("retries", retries, minimum=0, hint=" (0: no resume)")
    root = _mirror_root(mirror) if mirror is not None else None
    # Read once, and only when something is downloaded.
    sums = functools.cache(lambda: _mirror_sums(root) if root is not None else {})
    reports = []
    for file in _unique(files):
        report = _fetch_one(file, root, sums, retries, progress)
        reports.append(report)
        if log is not None:
            log(_line(report))
    return reports


def _fetch_one(
    file: WeightFile,
    root: str | None,
    sums: Callable[[], dict[str, str]],
    retries: int,
    progress: bool,
) -> FileReport:
    found = find_weight_file(file)
    if found is not None:
        problem = _verify_cached(file, found)
        if problem is None:
            return FileReport(file, "present", str(found), found.stat().st_size)
        _remove_cached(found)  # a corrupt copy would fail every run: replace it
    key = layout_path(file)
    url = f"{root}/{quote(key)}" if root is not None else file.url
    sha256, size = hub_metadata(url) if file.hf_file is not None else (None, None)
    sha256 = sums().get(key, sha256)
    part = _part_path(file)
    for attempt in range(retries + 1):
        try:
            download(url, part, file.path.name, progress)
            break
        except Unavailable as exc:
            return FileReport(file, "failed", str(exc))
        except Interrupted as exc:
            if attempt == retries:
                return FileReport(
                    file,
                    "failed",
                    f"download from {url} interrupted: {exc}; {part} keeps it, run the same "
                    "command again to resume",
                )
    return _finish(file, part, url, "fetched", sha256, size)


# --------------------------------------------------------------------------- check, export, import


def check(files: Iterable[WeightFile]) -> list[FileReport]:
    """Whether each file is in its cache and intact; one report per entry, no network."""
    seen: dict[Path, FileReport] = {}
    reports = []
    for file in files:
        if file.path not in seen:
            found = find_weight_file(file)
            if found is None:
                seen[file.path] = FileReport(file, "missing", "not in the cache")
            else:
                problem = _verify_cached(file, found)
                status = "present" if problem is None else "corrupt"
                seen[file.path] = FileReport(
                    file, status, problem or str(found), found.stat().st_size
                )
        shared = seen[file.path]
        reports.append(FileReport(file, shared.status, shared.detail, shared.size))
    return reports


def export_files(
    files: Iterable[WeightFile], folder: str | os.PathLike[str], *, log: Log | None = None
) -> list[FileReport]:
    """Copy the cached files to ``folder`` in the mirror layout, with ``SHA256SUMS``."""
    folder = Path(folder)
    sums_path = folder / SUMS_FILE
    sums = read_sums(sums_path.read_text()) if sums_path.is_file() else {}
    reports = []
    for file in _unique(files):
        found = find_weight_file(file)
        if found is None:
            report = FileReport(
                file, "missing", f"not in the cache; first run {file.fetch_command}"
            )
        elif (problem := _verify_cached(file, found)) is not None:
            report = FileReport(file, "corrupt", f"{found}: {problem}; not exported")
        else:
            target = folder / layout_path(file)
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with found.open("rb") as source, atomic_output(target) as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            sums[layout_path(file)] = digest.hexdigest()
            report = FileReport(file, "exported", str(target), target.stat().st_size)
        reports.append(report)
        if log is not None:
            log(_line(report))
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(sums_path, "".join(f"{h}  {p}\n" for p, h in sorted(sums.items())))
    return reports


def import_files(
    files: Iterable[WeightFile], folder: str | os.PathLike[str], *, log: Log | None = None
) -> list[FileReport]:
    """Place files from ``folder`` (the mirror layout, e.g. from :func:`export_files`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"--from {folder}: no such folder (write one with --to on a machine "
            "that has the weights)"
        )
    sums_path = folder / SUMS_FILE
    sums = read_sums(sums_path.read_text()) if sums_path.is_file() else {}
    reports = []
    for file in _unique(files):
        found = find_weight_file(file)
        source = folder / layout_path(file)
        if found is not None and _verify_cached(file, found) is None:
            report = FileReport(file, "present", str(found), found.stat().st_size)
        elif not source.is_file():
            report = FileReport(file, "failed", f"{source} does not exist")
        else:
            if found is not None:
                _remove_cached(found)  # corrupt: replaced by the folder's copy
            part = _part_path(file)
            part.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, part)
            report = _finish(file, part, str(source), "imported", sums.get(layout_path(file)), None)
        reports.append(report)
        if log is not None:
            log(_line(report))
    return reports


# --------------------------------------------------------------------------- reporting


def _size(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.1f} MB"


def _line(report: FileReport) -> str:
    return f"{report.status:>8}  {file_label(report.file)} ({_size(report.size)}): {report.detail}"


def format_table(reports: list[FileReport]) -> str:
    """One row per model and file: model, weights, file, size, status."""
    header = ("model", "weights", "file", "size", "status")
    rows = [
        (r.file.model, r.file.weights, file_label(r.file), _size(r.size), r.status) for r in reports
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    problems = {r.file.path: r for r in reports if not r.ok}
    lines += [f"{r.status}: {r.file.path} ({r.detail})" for r in problems.values()]
    return "\n".join(lines)


def summary(reports: list[FileReport]) -> str:
    """``"3 files: 2 fetched, 1 present"``, with what to do when some failed."""
    counts: dict[str, int] = {}
    for report in reports:
        counts[report.status] = counts.get(report.status, 0) + 1
    text = f"{len(reports)} files: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    if any(not r.ok for r in reports):
        text += "; see the lines above, then run the same command again"
    return text
