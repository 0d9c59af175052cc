"""Atomic file writes, the one implementation: records, predictions and archives all use it.

A reader sees the old file or the complete new one, never a partial write, and two writers never
share a temp file (each has a unique name in the target's folder, so ``os.replace`` stays on one
file system). On any error the temp file is removed and the old file is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces ``path`` when the ``with`` block ends cleanly.

    ``durable``: fsync before the rename (records); off for bulk outputs such as predictions,
    where a crash may lose the newest files but never leaves a truncated one. An existing file's
    permissions are kept; a new file gets the umask's, as a plain ``open()`` would give it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], data: str | bytes, *, durable: bool = True) -> Path:
    """Write ``data`` (str as UTF-8, or bytes) to ``path`` atomically (see :func:`atomic_output`)."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_output(path, durable=durable) as handle:
        handle.write(payload)
    return Path(path)


def json_ready(obj: Any) -> Any:
    """``obj`` with NaN/inf as None, numpy scalars/arrays as Python values, paths as str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and type(obj).__module__ in ("numpy", "torch"):
        return json_ready(obj.tolist())  # numpy scalars/arrays, tensors
    return obj


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as JSON (indent 2, NaN/inf -> null) to ``path`` atomically.

    The object is serialised before anything touches the disk, so an object that cannot be
    serialised raises ``TypeError``/``ValueError`` and leaves the old file untouched.
    """
    text = json.dumps(json_ready(obj), indent=2, allow_nan=False) + "\n"
    return write_text_atomic(path, text)
