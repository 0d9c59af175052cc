"""The results table's protocol footnote, written from what the records say.

Each setting the footnote states (evaluated split and tiles, inference mode, whether ms+flip ran,
the timing's input size, image count and precision, where the memory figure comes from, the
FLOPs input size) is read from the rows' records. When the rows agree the footnote states the
setting once; when they differ it names the rows of each value, so a table mixing protocols says
so instead of claiming one. Units come from :data:`~loveda_utils.results.schema.FIELDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..evaluation.inference import MS_FLIP_SCALES
from .schema import Record, field_named

__all__ = ["protocol_notes"]


def _by_setting(values: Sequence[str], labels: Sequence[str]) -> str:
    """The common value, or ``"a (row1, row2); b (row3)"`` when the rows differ."""
    groups: dict[str, list[str]] = {}
    for value, label in zip(values, labels, strict=True):
        groups.setdefault(value, []).append(label)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{value} ({', '.join(rows)})" for value, rows in groups.items())


def _evaluation(record: Mapping[str, Any]) -> str:
    dataset, config = record["dataset"], record.get("config") or {}
    if record["eval_mode"] == "slide":
        window, stride = config.get("slide_window"), config.get("slide_stride")
        mode = f"sliding-window inference ({window} px windows, stride {stride} px)"
    else:
        mode = "whole-tile inference"
    if "eval_amp" in record:  # recorded since schema 2
        mode += f" under autocast ({record['eval_amp']})" if record["eval_amp"] else " in fp32"
    return f"{dataset['split']} ({dataset['n_images']} tiles), {mode}"


def _timing(record: Mapping[str, Any]) -> str:
    size = record["fps_size"]
    precision = "mixed precision (autocast)" if record["amp"] else "full precision"
    return f"{record['fps_images']} images of {size}x{size}, {precision}"


def _memory(record: Mapping[str, Any]) -> str:
    if record.get("mem_gb") is None:
        return "not measured, checkpoint only evaluated"
    source = record.get("mem_source") or "source not recorded"
    precision = record.get("precision") or "precision not recorded"
    devices = record.get("devices")
    spread = f" x {devices} device{'s' if devices != 1 else ''}" if devices else ""
    return (f"{source}, training batch {record['batch_size']} per device{spread}, "
            f"precision {precision}")


def _flops(record: Mapping[str, Any]) -> str:
    size = record["flops_size"]
    return f"1x3x{size}x{size}"


def _bootstrap(record: Mapping[str, Any]) -> str:
    """How the record's interval was drawn, from its ``bootstrap`` settings."""
    settings = record.get("bootstrap") or {}
    if not settings:
        return "bootstrap over the evaluated tiles, settings not recorded"
    level, kind = settings.get("level"), settings.get("interval")
    draws, seed = settings.get("resamples"), settings.get("seed")
    head = " ".join(
        part for part in (
            f"{100 * level:g}%" if level is not None else "", kind or "", "bootstrap over the "
            "evaluated tiles",
        ) if part
    )  # fmt: skip
    tail = [
        f"{draws} resamples" if draws is not None else "",
        f"seed {seed}" if seed is not None else "",
    ]
    return ", ".join([head, *[t for t in tail if t]])


def _scales() -> str:
    return ", ".join(f"{s:g}" for s in MS_FLIP_SCALES)


def _interval_note(records: Sequence[Record], labels: Sequence[str]) -> str:
    with_ci = [(r, label) for r, label in zip(records, labels) if r.get("miou_ci")]
    if not with_ci:
        return "mIoU 95% CI: `-`, these records hold no bootstrap interval (made before them)."
    missing = [label for r, label in zip(records, labels) if not r.get("miou_ci")]
    none = f"; `-`: no interval in the record of {', '.join(missing)}" if missing else ""
    chosen, chosen_labels = [r for r, _ in with_ci], [label for _, label in with_ci]
    return (
        f"mIoU 95% CI: {_by_setting([_bootstrap(r) for r in chosen], chosen_labels)}; tiles "
        "are drawn with replacement, so the interval says how far the mIoU could move on another "
        f"draw of such tiles. `± w` when symmetric, else `[low, high]`{none}."
    )


def protocol_notes(records: Sequence[Record], labels: Sequence[str]) -> list[str]:
    """Footnote lines describing how the numbers of ``records`` (the table's rows, named by
    ``labels``) were measured; empty when there are no rows."""
    if not records:
        return []

    def setting(describe: Callable[[Mapping[str, Any]], str]) -> str:
        return _by_setting([describe(r) for r in records], labels)

    notes = [
        "mIoU, Urban/Rural mIoU: IoU per class (no-data pixels ignored) averaged over the "
        f"classes, in %, on {setting(_evaluation)}.",
    ]
    notes.append(_interval_note(records, labels))
    without = [label for r, label in zip(records, labels) if r.get("miou_ms_flip") is None]
    if len(without) < len(records):
        not_run = f"; not run for {', '.join(without)}" if without else ""
        notes.append(
            f"mIoU(ms+flip): mean softmax over scales {_scales()} of the tile, each also "
            f"flipped horizontally{not_run}."
        )
    notes += [
        f"Inf time: median ± interquartile range of per-image speed ({field_named('fps').unit}), "
        f"batch 1, over {setting(_timing)}; Device is the device timed.",
        f"Mem (GB): peak training memory in {field_named('mem_gb').unit}: {setting(_memory)}.",
        f"GFLOPs ({field_named('gflops').unit}): one forward pass at {setting(_flops)}.",
    ]
    return notes
