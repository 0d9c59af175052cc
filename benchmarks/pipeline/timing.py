"""How paths are timed: interleaved rounds, the background load of each run, paired ratios."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence


class Timing(list):
    """Seconds per run (a list of floats) with the background load of each run beside it."""

    background: list[float | None]


def cpu_counters() -> tuple[float, float] | None:
    """(busy CPU-seconds of the whole machine, CPU-seconds of this process and its reaped
    children), or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / ticks
    own = sum(
        getattr(resource.getrusage(who), attr)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for attr in ("ru_utime", "ru_stime")
    )
    return busy, own


def timed[T](fn: Callable[[], T]) -> tuple[T, float | None]:
    """``fn()`` and the share of all CPUs that other processes used meanwhile."""
    before, start = cpu_counters(), time.perf_counter()
    result = fn()
    after, wall = cpu_counters(), time.perf_counter() - start
    if before is None or after is None or wall <= 0:
        return result, None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return result, max(0.0, others) / (wall * (os.cpu_count() or 1))


def interleave(paths: dict[str, Callable[[], float]], rounds: int) -> dict[str, Timing]:
    """Run every path ``rounds`` times, alternating the order each round; seconds per run.

    On a shared machine a burst of load hits whichever path runs at that moment: alternating
    spreads it, and the best round of each path is the least disturbed one. The share of the
    CPUs other processes took during each run is kept beside it (``Timing.background``).
    """
    times: dict[str, Timing] = {}
    for name in paths:
        times[name] = Timing()
        times[name].background = []
    names = list(paths)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds, background = timed(paths[name])
            times[name].append(seconds)
            times[name].background.append(background)
    return times


def paired_ratio(reference: Sequence[float], ours: Sequence[float]) -> tuple[float, str]:
    """Speed of ours relative to ``reference``: the median over rounds of ``reference / ours``.

    The two runs of a round are adjacent in time, so a slow drift of a shared virtual machine
    (how far: ``benchmarks/RESULTS.md``, "Machine and run") cancels within each pair; the
    median then drops the rounds a burst hit. The ratio of the best runs is given beside it.
    """
    per_round = [r / o for r, o in zip(reference, ours, strict=True)]
    value = statistics.median(per_round)
    detail = (
        f"median of {len(per_round)} paired rounds "
        f"[{', '.join(f'{v:.3f}' for v in per_round)}]; best/best {min(reference) / min(ours):.3f}"
    )
    return value, detail
