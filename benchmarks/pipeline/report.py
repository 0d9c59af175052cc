"""Results: the targets, the rows of the table and the ratio lines held to the targets."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loveda_utils.models.registry import models_tagged

if TYPE_CHECKING:
    from .settings import Settings

#: The targets of issue 5 on the 2-core development CPU: (lowest, highest) acceptable ratio.
TARGETS: dict[str, tuple[float, float]] = {
    "ours/ceiling light": (0.90, float("inf")),
    "ours/ceiling heavy": (0.97, float("inf")),
    "ours/torchgeo": (1.20, float("inf")),
    "lightning/plain": (0.95, float("inf")),
    "fps/independent": (0.90, 1.10),
    "memory 128/8 tiles": (0.0, 1.05),
}
#: Which target a model's ours/ceiling ratio is held to.
LIGHT_MODELS = tuple(models_tagged("light"))
#: Targets withdrawn (issue 10) on a CPU of at most this many cores whose every core runs the
#: forward pass, by (target, tile side): the ratio is still measured and printed, without a
#: verdict, beside the decode and count time per tile that our path cannot avoid.
WITHDRAWN_MAX_CPUS = 2
WITHDRAWN: dict[tuple[str, int], str] = {
    ("ours/ceiling light", 512): (
        "the forward pass uses every core, so PNG decoding and counting cannot overlap it"
    ),
}


def target_for(model: str) -> str:
    """The target a model's ours/ceiling ratio is held to (light or heavy)."""
    return "ours/ceiling light" if model in LIGHT_MODELS else "ours/ceiling heavy"


def withdrawal(target: str, size: int, settings: Settings) -> str | None:
    """Why ``target`` does not apply to ``size`` px tiles in this run, or None when it does."""
    cpus = settings.cpus
    if settings.device.type != "cpu" or cpus > WITHDRAWN_MAX_CPUS or settings.threads < cpus:
        return None
    reason = WITHDRAWN.get((target, size))
    return None if reason is None else f"{cpus}-core CPU: {reason}"


def progress(message: str) -> None:
    """Progress goes to stderr: stdout holds only the table and the ratios."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the table: a path timed over ``rounds`` repetitions of ``units`` items."""

    section: str
    model: str
    size: int | None
    path: str
    seconds: list[float]
    units: int
    unit: str = "tile"
    note: str = ""
    background: float | None = None  # others' CPU share during the best run

    def __post_init__(self) -> None:
        loads = getattr(self.seconds, "background", None)
        if loads and self.background is None:
            self.background = loads[self.seconds.index(min(self.seconds))]
        self.seconds = list(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def per_unit_ms(self) -> float:
        return 1000 * self.best / self.units

    def rate(self) -> float:
        return self.units / self.best


@dataclass
class Ratio:
    """A ratio held to a target; ``value`` is ``None`` when it could not be measured.

    ``withdrawn`` (the reason) makes it a measurement without a target: printed with its
    value, never counted as met or missed.
    """

    name: str
    subject: str
    value: float | None
    target: str
    detail: str = ""
    withdrawn: str | None = None

    @property
    def met(self) -> bool | None:
        if self.value is None or self.withdrawn:
            return None
        low, high = TARGETS[self.target]
        return low <= self.value <= high

    def format(self) -> str:
        low, high = TARGETS[self.target]
        if high == float("inf"):
            want = f">= {low:.2f}"
        elif low == 0:
            want = f"<= {high:.2f}"
        else:
            want = f"{low:.2f}..{high:.2f}"
        value = "   n/a" if self.value is None else f"{self.value:6.3f}"
        if self.withdrawn:
            verdict = "no target, MEASURED"
            why = f"target {want} withdrawn on this {self.withdrawn}"
            detail = f"  ({why}; {self.detail})" if self.detail else f"  ({why})"
            return f"ratio {self.name:<22} {self.subject:<34} {value}  {verdict}{detail}"
        verdict = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[self.met]
        detail = f"  ({self.detail})" if self.detail else ""
        return (
            f"ratio {self.name:<22} {self.subject:<34} {value}  target {want:<10} {verdict}{detail}"
        )


@dataclass
class Report:
    """Everything one run measured."""

    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        progress(
            f"  {row.section:<9} {row.model:<27} {row.size or '':>5} {row.path:<34} "
            f"best {row.best:8.3f} s  median {row.median:8.3f} s  ({row.units} {row.unit}s)"
        )
        return row


def format_table(rows: Sequence[Row]) -> str:
    """The table: one line per measured path."""
    head = (
        f"{'section':<9} {'model':<27} {'px':>5} {'path':<40} {'n':>4} {'unit':<5} "
        f"{'best s':>8} {'median s':>9} {'ms/unit':>9} {'unit/s':>8} {'bg%':>4}  note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        bg = "-" if r.background is None else f"{100 * r.background:.0f}"
        lines.append(
            f"{r.section:<9} {r.model:<27} {r.size or '':>5} {r.path:<40} {r.units:>4} "
            f"{r.unit:<5} {r.best:8.3f} {r.median:9.3f} {r.per_unit_ms():9.2f} "
            f"{r.rate():8.2f} {bg:>4}  {r.note}"
        )
    legend = (
        "best s / median s: over the rounds; ms/unit and unit/s from the best round; bg%: share "
        "of all CPUs other processes used during the best round (from /proc/stat)"
    )
    return "\n".join([*lines, "", legend])
