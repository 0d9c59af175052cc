"""Error classes, and the one integer check behind their messages. Each message names the
argument or file at fault and says how to fix it."""

from __future__ import annotations


class LoveDAError(Exception):
    """Base class of every error this package raises on purpose."""


class DatasetNotFoundError(LoveDAError, FileNotFoundError):
    """The LoveDA root (or a split/scene inside it) is not on disk."""


class InvalidDataError(LoveDAError, ValueError):
    """A LoveDA tree exists but holds problems (missing pairs, bad PNGs, bad mask values).

    ``problems`` keeps the individual messages, each naming its file.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class UnknownModelError(LoveDAError, KeyError):
    """A model name that the registry does not hold; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class WeightsError(LoveDAError, ValueError):
    """Pretrained weights that cannot be used: missing offline, corrupt, or not fitting the backbone."""


class CheckpointError(LoveDAError, ValueError):
    """A checkpoint that is missing, unreadable, or for another model."""


class ConfigError(LoveDAError, ValueError):
    """A bad parameter value (crop larger than the tile, unknown profile, ...)."""


class RecordError(LoveDAError, ValueError):
    """A results record that does not match the record schema (``loveda_utils/results/schema.py``)."""


class PreflightError(LoveDAError):
    """The suite's pre-flight refused to start (``loveda_utils/benchmark/preflight.py``);
    ``report`` holds every finding, and the message says where the fixes are listed."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


def check_int(name: str, value: object, minimum: int = 1, hint: str = "") -> None:
    """Refuse anything but an ``int`` of at least ``minimum`` (a ``bool`` is not one) for the
    parameter ``name``: a :class:`ConfigError` naming it and its value, then ``hint`` (e.g. what
    the edge value means)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        bound = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{name}={value!r}: must be {bound}{hint}")
