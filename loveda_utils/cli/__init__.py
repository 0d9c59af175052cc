"""Command line: ``python -m loveda_utils <command> ...`` (``--help`` on each command).

Each command is a thin wrapper around a package function, so notebooks and tests call the same
code. Expected failures (bad data, unknown model, ...) print one clear message and exit non-zero,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import LoveDAError
from . import data, results, suite, train, weights  # noqa: F401  (each registers its commands)
from .common import COMMANDS, DISK_ERRNOS


class _Parser(argparse.ArgumentParser):
    """Argument errors (an invalid choice, a missing flag) as one line, like the commands' own."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m loveda_utils", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (fn, add_arguments, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_arguments(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LoveDAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        where = exc.filename if exc.filename is not None else "a file"
        print(f"error: cannot write {where}: {exc.strerror}; use a folder you can write in (or fix "
              "its permissions, or free space)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
