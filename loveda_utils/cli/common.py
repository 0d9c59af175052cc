"""What every command shares: the command registry, comma-separated values, validated names."""

from __future__ import annotations

import argparse
import errno
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError

#: Errors of the disk a command writes to (a read-only folder, a full disk): one line, exit 2.
DISK_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args) -> exit code`` as a sub-command; ``arguments(parser)`` adds its flags."""

    def register(fn: Command) -> Command:
        COMMANDS[name] = (fn, arguments, help)
        return fn

    return register


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer no smaller than ``minimum``. A bad value is argparse's
    one-line error naming the flag (exit 2), not a value the command quietly reads as another."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: must be an integer >= {minimum}")
        return value

    return parse


def comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def checked_names(flag: str, values: Sequence[str], normalize: Callable[[str], Any], valid: Sequence[str]) -> list:
    """``--splits``/``--scenes`` values in the archive's spelling; a bad one is a one-line
    :class:`~loveda_utils.errors.ConfigError` naming the flag and the valid names (exit 2)."""
    names: list = []
    for value in values or [""]:
        try:
            normalized = normalize(value)
        except ValueError:
            raise ConfigError(f"{flag} {value!r}: use {', '.join(valid)} (comma-separated, any "
                              "case)") from None
        for name in normalized if isinstance(normalized, tuple) else (normalized,):
            if name not in names:
                names.append(name)
    return names


def suite_settings(pairs: list[str]) -> dict:
    """``--set key=value`` pairs, each key a notebook parameter the suite does not set itself
    (checked before anything runs); values parsed as YAML (numbers, true/false, null, strings)."""
    import yaml

    from ..benchmark.suite import check_overrides

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: use key=value, e.g. --set max_steps=300")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML; quote it, e.g. "
                              f"--set '{key.strip()}=\"{value}\"'") from None
    return check_overrides(out)


def model_names(names: list[str] | None) -> list[str] | None:
    """``--models`` as given (None: not given); an empty list is refused, not read as "all"."""
    if names is not None and not names:
        raise ConfigError("--models: no model named; pass comma-separated registry names, e.g. "
                          "--models unet_resnet18,fpn_resnet50, or leave --models out")
    return names
