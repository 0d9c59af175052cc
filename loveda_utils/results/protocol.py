"""The results table's protocol footnote, written from what the records say.

Each setting the footnote states (evaluated split and tiles, inference mode, whether ms+flip ran,
the timing's input size and image counts, the fast timing's settings, how the memory figure was
measured, the multiply-adds' input size) is read from the rows' records; records written before
a definition changed (schema 1: median fps, the run's own training memory) say so in their
row's setting. When the rows agree the footnote states the setting once; when they differ it
names the rows of each value, so a table mixing protocols says so instead of claiming one. Units come from :data:`~loveda_utils.results.schema.FIELDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..evaluation.inference import MS_FLIP_SCALES
from ..training.recipe import MMSEG, MMSEG_GPUS
from .schema import Record, field_named

__all__ = ["batch_text", "protocol_notes"]


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


#: How Inf time is measured since schema 2, and how records written before measured it.
MMSEG_TIMING = (
    "MMSeg's definition (tools/analysis_tools/benchmark.py: fp32, NCHW, cudnn.benchmark off; "
    "each image normalised, then forward + resize + argmax timed with the device synchronised; "
    "timed images / their total time)"
)
MEDIAN_TIMING = "the median per-image speed of forward + argmax, normalisation included"


def _median_timed(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` (schema 1) holds the median fps rather than MMSeg's figure."""
    return "fps_warmup" not in record


def _timing(record: Mapping[str, Any]) -> str:
    size, images = record["fps_size"], record["fps_images"]
    if _median_timed(record):
        precision = "mixed precision (autocast)" if record["amp"] else "full precision"
        return f"{images} images of {size}x{size}, {precision}"
    return f"{images} images after {record['fps_warmup']} warm-up, {size}x{size}"


def _fast(record: Mapping[str, Any]) -> str:
    settings = record.get("fps_fast_settings")
    if record.get("fps_fast") is None or not settings:
        return "not measured"
    precision = settings["precision"]
    return (
        f"{precision if precision == 'fp32' else precision + ' autocast'}, "
        f"{'channels-last' if settings['channels_last'] else 'NCHW'}, cudnn.benchmark "
        f"{'on' if settings['cudnn_benchmark'] else 'off'}"
    )


def _memory(record: Mapping[str, Any]) -> str:
    if record.get("mem_gb") is None:
        return "not measured"
    source = record.get("mem_source") or "source not recorded"
    probe = record.get("mem_protocol")
    if probe is None:  # schema 1: the run's own training
        precision = record.get("precision") or "precision not recorded"
        devices = record.get("devices")
        spread = f" x {devices} device{'s' if devices != 1 else ''}" if devices else ""
        return (f"{source} of the run's own training, batch {record['batch_size']} per "
                f"device{spread}, {precision}")
    crop = probe["crop"]
    setting = f"{probe['batch']} images of {crop}x{crop} in {probe['precision']} ({probe['optimizer']})"
    return (f"as MMSeg's, whatever schedule the row trained with: {source} over {probe['steps']} "
            f"steps training {setting} in a fresh process")


def batch_text(record: Mapping[str, Any]) -> str:
    """The training batch as MMSeg's config names write it: ``<devices>xb<images per device>``
    (``1xb4``: one device, 4 images a step); ``b<images>`` when the devices are not recorded."""
    devices = record.get("devices")
    return f"b{record['batch_size']}" if devices is None else f"{devices}xb{record['batch_size']}"


def _training(record: Mapping[str, Any]) -> str:
    text = f"{batch_text(record)} in {record.get('precision') or 'a precision not recorded'}"
    if (record.get("config") or {}).get("fidelity") == "fast":
        text += " with torchvision's faster training transforms (fidelity fast, not MMSeg's)"
    return text


def _flops(record: Mapping[str, Any]) -> str:
    if record.get("gmacs") is None:
        return "not counted (the record predates the field)"
    size = record["flops_size"]
    return f"one forward pass at 1x3x{size}x{size}"


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
    median = [label for r, label in zip(records, labels) if _median_timed(r)]
    if len(median) == len(records):
        definition = MEDIAN_TIMING
    else:
        definition = MMSEG_TIMING
        if median:
            definition += f", except {', '.join(median)} (recorded before: {MEDIAN_TIMING})"
    notes.append(
        f"Inf time ({field_named('fps').unit}) ± the interquartile range of per-image speed, "
        f"batch 1, {definition}: over {setting(_timing)}. Device is the device timed."
    )
    if any(r.get("fps_fast") is not None for r in records):
        notes.append(
            "Inf time, fast: the same timing under this package's inference settings (not "
            f"MMSeg's figure): {setting(_fast)}."
        )
    notes.append(
        "Batch: devices x training images per device, as MMSeg's config names write it (its "
        f"LoveDA rows: {MMSEG_GPUS}xb{MMSEG.batch_size}, {MMSEG_GPUS * MMSEG.batch_size} images "
        f"per step, in fp32); trained as {setting(_training)}."
    )
    notes += [
        f"Mem (GB): peak training memory in {field_named('mem_gb').unit}: {setting(_memory)}.",
        f"GMACs ({field_named('gmacs').unit}), counted as MMSeg's get_flops counts its GFLOPs "
        "(mmengine: a multiply-add is one, plus per-element terms for normalisation, "
        f"upsampling and pooling): {setting(_flops)}.",
    ]
    return notes
