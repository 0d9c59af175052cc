"""Which of our rows differ beyond tile-sampling noise: every pair, by a paired bootstrap.

For every pair of real LoveDA rows of the table (newest run per group, synthetic rows never)
that evaluated exactly the same tiles, :func:`paired_differences` compares the two runs'
``per_tile_confusion.npz`` with :func:`loveda_utils.results.compare.compare_runs` (a paired
bootstrap over tiles, :func:`loveda_utils.evaluation.bootstrap.paired_bootstrap`): the
difference of their mIoUs and its 95% interval. Rows that cannot be paired (no per-tile file,
other tiles) are named with the reason, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from ..evaluation.bootstrap import DEFAULT_BOOTSTRAP, BootstrapSettings
from ..evaluation.per_tile import PER_TILE_FILE
from .compare import compare_runs, run_tiles
from .schema import Record
from .table import record_labels, select_records, split_by_data

__all__ = ["PAIR_COLUMNS", "paired_differences", "paired_differences_markdown"]

#: Columns of :func:`paired_differences`: labels, mIoUs (%), the difference and its interval
#: (percentage points), whether 0 lies outside it, and the number of tiles paired.
PAIR_COLUMNS: tuple[str, ...] = (
    "pair", "better", "other", "miou_better", "miou_other", "difference", "low", "high",
    "significant", "tiles",
)  # fmt: skip


#: Two mIoUs (fractions) agree within half the last digit the table shows (0.005 in %).
_SAME = 5e-5


def _points(value: float) -> float:
    return round(100 * value, 2)


def paired_differences(
    records: Iterable[Record],
    ms_flip: bool = False,
    settings: BootstrapSettings = DEFAULT_BOOTSTRAP,
) -> pd.DataFrame:
    """Every pair of our real rows over the same tiles: mIoU difference and its interval.

    Args:
        records: loaded records (their ``_run_dir`` holds ``per_tile_confusion.npz``).
        ms_flip: compare the ms+flip matrices instead of the single-scale ones.
        settings: how each pair's resamples are drawn.

    Returns:
        One row per pair (:data:`PAIR_COLUMNS`), the higher-ranked run as ``better`` and the
        difference taken ``better - other``, largest difference first. ``significant``: 0 lies
        outside the interval. ``df.attrs["skipped"]`` names each row left out and why,
        ``df.attrs["unpaired"]`` the pairs whose tiles differ, ``df.attrs["mismatched"]`` the
        rows whose per-tile file does not add up to the mIoU their record states.
    """
    real, _ = split_by_data(records)
    chosen = select_records(real)
    labelled = list(zip(record_labels(chosen), chosen))
    skipped, tiles = [], {}
    for label, record in labelled:
        run_dir = record.get("_run_dir")
        if run_dir is None:
            skipped.append(f"{label}: not loaded from a run folder")
            continue
        try:
            tiles[label] = frozenset(run_tiles(Path(run_dir), ms_flip).names)
        except ConfigError as err:
            skipped.append(f"{label}: {err}")
    rows, unpaired, mismatched = [], [], {}
    for (label_a, a), (label_b, b) in combinations(labelled, 2):
        if label_a not in tiles or label_b not in tiles:
            continue
        if tiles[label_a] != tiles[label_b]:
            unpaired.append(f"{label_a} / {label_b}: different tiles")
            continue
        # compare_runs gives B - A: the lower-ranked run as A, so the difference is better - other.
        paired = compare_runs(b["_run_dir"], a["_run_dir"], ms_flip=ms_flip, settings=settings).paired
        for label, record, miou in ((label_a, a, paired.miou_b), (label_b, b, paired.miou_a)):
            stated = record.get("miou_ms_flip" if ms_flip else "miou")
            if stated is not None and abs(stated - miou) > _SAME and label not in mismatched:
                mismatched[label] = (
                    f"{label}: its {PER_TILE_FILE} gives mIoU {100 * miou:.2f}, its record "
                    f"{100 * stated:.2f}; the file is not from the evaluation the record states"
                )
        rows.append([
            f"{label_a} vs {label_b}", label_a, label_b, _points(paired.miou_b),
            _points(paired.miou_a), _points(paired.difference), _points(paired.ci[0]),
            _points(paired.ci[1]), paired.significant, paired.n_tiles,
        ])  # fmt: skip
    df = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    df = df.sort_values("difference", ascending=False, kind="stable").reset_index(drop=True)
    df.attrs["skipped"] = skipped
    df.attrs["unpaired"] = unpaired
    df.attrs["mismatched"] = list(mismatched.values())
    return df


def paired_differences_markdown(df: pd.DataFrame) -> str:
    """:func:`paired_differences` as a ranked markdown list table, with what was left out."""
    lines = []
    if df.empty:
        lines.append("_No two real LoveDA runs evaluated on the same tiles yet._")
    else:
        lines += [
            "| better (mIoU) | other (mIoU) | difference (pp) | 95% CI (pp) | significant | tiles |",
            "|---|---|---|---|---|---|",
        ]
        for row in df.itertuples(index=False):
            verdict = "yes" if row.significant else "no (0 inside the interval)"
            lines.append(
                f"| {row.better} ({row.miou_better:.2f}) | {row.other} ({row.miou_other:.2f}) | "
                f"{row.difference:+.2f} | [{row.low:+.2f}, {row.high:+.2f}] | {verdict} | "
                f"{row.tiles} |"
            )
    notes = [f"left out: {s}" for s in df.attrs.get("skipped", [])]
    notes += [f"not paired: {u}" for u in df.attrs.get("unpaired", [])]
    notes += [f"**check**: {m}" for m in df.attrs.get("mismatched", [])]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
