"""LoveDA's cross-domain benchmark as source-only baselines: one 2x2 table per model.

LoveDA's second benchmark asks how a model trained on one domain does on the other (Urban to
Rural and Rural to Urban). Its source-only baseline is a model trained on the Train split of one
domain and evaluated on the Val split of the target. The suite's ``cross-domain`` profile
(``loveda_utils/benchmark/suite.py``) trains each model once per domain and evaluates it on both
domains' Val, so each record holds one row of the 2x2 table: its ``per_scene_miou`` is the
in-domain score (its own domain) and the cross-domain score (the other one).

:func:`cross_domain_table` pairs a model's two records (same model, recipe, crop, schedule,
pretrained weights and data) into its 2x2 table, with the in-domain and cross-domain mIoU of
each row and the drop between them. Records trained on both domains are not part of it.
Records made on the synthetic mini-LoveDA are marked like in every table and never paired with
LoveDA ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .. import paths
from ..data.classes import SCENES, normalize_scenes
from .schema import Record, record_created
from .store import load_records
from .table import record_label

__all__ = [
    "CROSS_DOMAIN_COLUMNS",
    "CROSS_DOMAIN_INDEX",
    "cross_domain_records",
    "cross_domain_table",
    "train_domain",
]

#: The index levels of :func:`cross_domain_table`: a model's runs share all but ``Trained on``.
CROSS_DOMAIN_INDEX = ("Model", "Crop Size", "Lr schd", "Trained on")
#: Its columns: mIoU (%) on each domain's Val, then the row's in-domain and cross-domain mIoU
#: and the drop (in-domain - cross-domain, in points).
CROSS_DOMAIN_COLUMNS = (*(f"Val {scene}" for scene in SCENES), "In-domain", "Cross-domain", "Drop")
#: The split the cross-domain table reads (the source-only baseline's target split).
EVAL_SPLIT = "Val"


def train_domain(record: Mapping[str, Any]) -> str | None:
    """The one domain (``"Urban"`` or ``"Rural"``) the record's model was trained on, from its
    ``config.train_scenes``; None when it was trained on both (records that predate the
    parameter were)."""
    scenes = normalize_scenes((record.get("config") or {}).get("train_scenes") or "both")
    return scenes[0] if len(scenes) == 1 else None


def cross_domain_records(results_dir: str | os.PathLike[str]) -> tuple[list[Record], list[str]]:
    """The single-domain records of ``results_dir`` and of its cross-domain subfolder
    (``<results_dir>/cross-domain``, :data:`loveda_utils.paths.CROSS_DOMAIN_SUBDIR`, where the
    ``cross-domain`` profile writes), with the problems of damaged records in either."""
    results_dir = Path(results_dir)
    records, problems = load_records(results_dir)
    subfolder = results_dir / paths.CROSS_DOMAIN_SUBDIR
    if subfolder.is_dir():
        more, more_problems = load_records(subfolder)
        records += more
        problems += [f"{paths.CROSS_DOMAIN_SUBDIR}/{problem}" for problem in more_problems]
    return [r for r in records if train_domain(r) is not None], problems


def _pairing_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """What two records must share to be one model's two rows (everything but the domain)."""
    config = record.get("config") or {}
    return (
        record["model"], bool(record["dataset"].get("synthetic")), record["crop_size"],
        record["lr_schd"], config.get("recipe"), record.get("pretrained"),
    )  # fmt: skip


def _pct(value: float | None) -> float:
    return float("nan") if value is None else round(100 * value, 2)


def cross_domain_table(records: Iterable[Record], ms_flip: bool = False) -> pd.DataFrame:
    """The 2x2 table of every model trained on one domain, in %.

    Each row is one run: the model (:data:`CROSS_DOMAIN_INDEX`) and the domain it was trained on;
    its columns (:data:`CROSS_DOMAIN_COLUMNS`) are its mIoU on each domain's Val, then those two
    as in-domain and cross-domain, and the drop. A model's two rows form its 2x2 table. Of
    repeated runs the newest (``created``) counts; records trained on both domains, or evaluated
    on another split than Val, are left out. A scene that was not evaluated is NaN.

    Args:
        records: results records (``load_records`` or :func:`cross_domain_records`).
        ms_flip: read the ms+flip scores (``per_scene_miou_ms_flip``) instead of single-scale.
    """
    newest: dict[tuple[Any, ...], Record] = {}
    for record in records:
        domain = train_domain(record)
        if domain is None or record["dataset"].get("split") != EVAL_SPLIT:
            continue
        key = (*_pairing_key(record), domain)
        if key not in newest or record_created(record) > record_created(newest[key]):
            newest[key] = record
    rows = []
    # Table order: LoveDA before synthetic, then by model; in a model, Urban's row first.
    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        model, synthetic, crop, lr_schd, recipe, pretrained, domain = key
        return synthetic, model, crop, lr_schd, str(recipe), str(pretrained), SCENES.index(domain)

    for key in sorted(newest, key=order):
        record, domain = newest[key], key[-1]
        scores = record.get("per_scene_miou_ms_flip" if ms_flip else "per_scene_miou") or {}
        by_scene = {scene: scores.get(scene.lower()) for scene in SCENES}
        (other,) = [scene for scene in SCENES if scene != domain]
        inside, across = by_scene[domain], by_scene[other]
        drop = None if inside is None or across is None else inside - across
        rows.append([record_label(record), record["crop_size"], record["lr_schd"], domain,
                     *map(_pct, (*by_scene.values(), inside, across, drop))])
    table = pd.DataFrame(rows, columns=[*CROSS_DOMAIN_INDEX, *CROSS_DOMAIN_COLUMNS])
    return table.astype(dict.fromkeys(CROSS_DOMAIN_COLUMNS, float)).set_index(list(CROSS_DOMAIN_INDEX))
