"""Replacing a generated section of a text file between two marker lines.

The README's results table (``<!-- results:start -->`` ... ``<!-- results:end -->``) and the
record-field table of ``docs/CONTRACTS.md`` (``<!-- fields:start -->`` ... ``<!-- fields:end -->``)
are both generated: everything outside the markers is kept byte for byte, including the file's
line endings.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def marked_section(
    text: str, start: str, end: str, where: str | Path, fix: str = ""
) -> tuple[int, int]:
    """``(begin, stop)`` offsets of the text strictly between the two markers in ``text``.

    Raises:
        ConfigError: unless ``text`` holds exactly one ``start`` followed later by one ``end``;
            the message names ``where`` (the file), the markers to add and ``fix`` (another way
            out, e.g. ``"or pass --no-readme"``).
    """
    starts, ends = text.count(start), text.count(end)
    begin, stop = text.find(start), text.find(end)
    if starts != 1 or ends != 1 or stop < begin:
        raise ConfigError(
            f"{where}: the generated section needs exactly one line {start!r} followed later by "
            f"one line {end!r} (found {starts} start and {ends} end marker(s)); add them where "
            "the generated text should go" + (f", {fix}" if fix else "")
        )
    return begin + len(start), stop


def section_text(text: str, start: str, end: str, where: str | Path) -> str:
    """The current body between the markers, line endings as ``\\n``, without the edge newlines."""
    begin, stop = marked_section(text, start, end, where)
    return text[begin:stop].replace("\r\n", "\n").strip("\n")


def replace_section(
    text: str, start: str, end: str, body: str, where: str | Path, fix: str = ""
) -> str:
    """``text`` with the lines between the markers replaced by ``body`` (in ``text``'s newlines)."""
    begin, stop = marked_section(text, start, end, where, fix)
    newline = "\r\n" if "\r\n" in text else "\n"
    body = body.strip("\n").replace("\n", newline)
    return text[:begin] + newline + body + newline + text[stop:]
