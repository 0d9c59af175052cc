"""Resumable HTTP transfers for ``fetch-weights`` (:mod:`loveda_utils.models.fetch`).

:func:`download` fetches a URL into a ``.part`` file and resumes what that file already holds with
an HTTP ``Range`` request; a transfer that stops early raises :class:`Interrupted` (the ``.part``
keeps what arrived), a source that does not serve the file raises :class:`Unavailable`.
:func:`hub_metadata` reads the SHA-256 and size the Hugging Face Hub publishes for a file.
"""

from __future__ import annotations

import http.client
import re
import sys
import urllib.request
from pathlib import Path
from urllib.error import HTTPError, URLError

__all__ = ["Interrupted", "Unavailable", "download", "hub_metadata", "read_sums"]

#: Bytes read and written at a time.
CHUNK = 1 << 20
#: Seconds without data before a download counts as interrupted.
TIMEOUT = 60
USER_AGENT = "loveda_utils fetch-weights"
#: A full SHA-256 in lower-case hex.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the Hub's metadata headers are on the redirect itself


def hub_metadata(url: str) -> tuple[str | None, int | None]:
    """``(sha256, size)`` from a Hub-style ``HEAD``: ``X-Linked-Etag``/``X-Linked-Size``."""
    request = urllib.request.Request(
        url, method="HEAD", headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    )
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=TIMEOUT) as reply:
            headers = reply.headers
    except HTTPError as exc:  # a 3xx redirect arrives here, headers included
        headers = exc.headers
    except (URLError, OSError, http.client.HTTPException):
        return None, None  # the download itself will report the problem
    etag = (headers.get("X-Linked-Etag") or "").removeprefix("W/").strip('"').lower()
    size = headers.get("X-Linked-Size")
    return (etag if SHA256_HEX.fullmatch(etag) else None), (int(size) if size else None)


class Interrupted(Exception):
    """The transfer stopped early; the ``.part`` file keeps what arrived."""


class Unavailable(Exception):
    """The source does not serve the file (HTTP error, unreachable host)."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` of ``bytes 100-199/200`` or ``bytes */200``."""
    found = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if found is None:
        return None, None
    start, total = found.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def download(url: str, part: Path, label: str, progress: bool) -> None:
    """Fetch ``url`` into ``part``, resuming what ``part`` holds with a Range request."""
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        reply = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT
        )
    except HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after offset: complete, or a stale larger part
            if _content_range(exc.headers.get("Content-Range"))[1] == offset:
                return
            part.unlink()
            return download(url, part, label, progress)
        raise Unavailable(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except (URLError, OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    with reply:
        length = reply.headers.get("Content-Length")
        if offset and reply.status == 206:
            start, total = _content_range(reply.headers.get("Content-Range"))
            if start != offset:  # not the bytes we asked for: start the file over
                part.unlink()
                raise Interrupted(f"the server resumed at byte {start}, not {offset}")
        else:  # a fresh download, or a server that ignores Range: start over
            offset, total = 0, None
        if total is None and length is not None:
            total = offset + int(length)
        from tqdm.auto import tqdm

        stopped: BaseException | None = None
        with (
            part.open("ab" if offset else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=None if progress else True,
                file=sys.stderr,
                leave=False,
            ) as bar,
        ):
            try:
                while chunk := reply.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                stopped = exc
    received = part.stat().st_size
    if stopped is not None or (total is not None and received < total):
        why = f" ({type(stopped).__name__}: {stopped})" if stopped is not None else ""
        of = f" of {total}" if total is not None else ""
        raise Interrupted(f"the connection ended after {received}{of} bytes{why}")


def read_sums(text: str) -> dict[str, str]:
    """``path -> sha256`` from ``sha256sum`` lines (``<hex>  <path>`` or ``<hex> *<path>``)."""
    sums = {}
    for line in text.splitlines():
        digest, _, name = line.strip().partition(" ")
        if SHA256_HEX.fullmatch(digest.lower()) and name.strip():
            sums[name.strip().removeprefix("*")] = digest.lower()
    return sums
