"""The cross-domain benchmark: single-domain run groups, and the 2x2 table read from records."""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
from conftest import write_tree
from record_factory import DEEPLAB, FCN, make_record, write_run

from loveda_utils.paths import CROSS_DOMAIN_SUBDIR
from loveda_utils.results.cross_domain import (
    CROSS_DOMAIN_COLUMNS,
    CROSS_DOMAIN_INDEX,
    cross_domain_records,
    cross_domain_table,
    train_domain,
)
from loveda_utils.results.report import render_comparison
from loveda_utils.results.store import run_group_for


def single_domain(
    model: tuple[str, str, str], scene: str, urban: float | None, rural: float | None, **overrides
) -> dict:
    """A record of ``model`` trained on ``scene`` only and evaluated on both domains' Val."""
    synthetic = overrides.pop("synthetic", False)
    crop, iters = overrides.get("crop_size", 512), overrides.get("lr_schd", 80000)
    group = run_group_for(model[0], synthetic, crop, iters, train_scenes=scene)
    config = {"model": model[0], "recipe": "mmseg", "train_scenes": scene, "eval_scenes": "both",
              "limit_eval_images": None}
    return make_record(model, synthetic=synthetic, run_group=group, run_name=group, config=config,
                       per_scene_miou={"urban": urban, "rural": rural}, **overrides)


def test_a_single_domain_run_has_its_scene_in_its_group() -> None:
    assert run_group_for("fcn_resnet50", False, 512, 80000, train_scenes="Urban") == (
        "fcn_resnet50-loveda-urban-512px-80000it"
    )
    assert run_group_for("fcn_resnet50", True, 128, 150, train_scenes=["rural"]) == (
        "fcn_resnet50-mini-rural-128px-150it"
    )
    # Trained on both (however spelled), the group is the one older records carry.
    legacy = "fcn_resnet50-loveda-512px-80000it"
    for both in ("both", "all", ["Urban", "Rural"], ("rural", "urban")):
        assert run_group_for("fcn_resnet50", False, 512, 80000, train_scenes=both) == legacy
    assert run_group_for("fcn_resnet50", False, 512, 80000) == legacy


def test_train_domain() -> None:
    assert train_domain(single_domain(DEEPLAB, "urban", 0.5, 0.4)) == "Urban"
    assert train_domain(single_domain(DEEPLAB, "Rural", 0.5, 0.4)) == "Rural"
    assert train_domain(make_record()) is None  # no train_scenes in its config: trained on both
    assert train_domain(make_record(config={"train_scenes": "both"})) is None


def test_the_2x2_table_from_records() -> None:
    records = [
        single_domain(DEEPLAB, "urban", 0.5512, 0.4031),
        single_domain(DEEPLAB, "rural", 0.4218, 0.5004),
        # An older repeat of the Urban run: the newest one counts.
        single_domain(DEEPLAB, "urban", 0.30, 0.20, created="2024-01-01T00:00:00+00:00"),
        make_record(DEEPLAB),  # trained on both: not part of the cross-domain table
        single_domain(FCN, "rural", 0.41, 0.47),  # only one of its two runs so far
        # Synthetic runs of the same model never pair with LoveDA ones.
        single_domain(DEEPLAB, "urban", 0.9, 0.1, synthetic=True),
        # Evaluated on Urban only: no cross-domain score.
        single_domain(FCN, "urban", 0.52, None),
    ]
    table = cross_domain_table(records)
    assert list(table.columns) == list(CROSS_DOMAIN_COLUMNS)
    assert table.index.names == list(CROSS_DOMAIN_INDEX)
    assert list(table.index) == [
        ("DeepLabV3+ R-50", 512, 80000, "Urban"),
        ("DeepLabV3+ R-50", 512, 80000, "Rural"),
        ("FCN R-50", 512, 80000, "Urban"),
        ("FCN R-50", 512, 80000, "Rural"),
        ("DeepLabV3+ R-50 †", 512, 80000, "Urban"),
    ]
    urban = table.loc[("DeepLabV3+ R-50", 512, 80000, "Urban")]
    assert urban.to_dict() == {"Val Urban": 55.12, "Val Rural": 40.31, "In-domain": 55.12,
                               "Cross-domain": 40.31, "Drop": 14.81}
    rural = table.loc[("DeepLabV3+ R-50", 512, 80000, "Rural")]
    assert rural.to_dict() == {"Val Urban": 42.18, "Val Rural": 50.04, "In-domain": 50.04,
                               "Cross-domain": 42.18, "Drop": 7.86}
    fcn_urban = table.loc[("FCN R-50", 512, 80000, "Urban")]
    assert fcn_urban["In-domain"] == 52.0
    assert math.isnan(fcn_urban["Cross-domain"]) and math.isnan(fcn_urban["Drop"])
    assert table.loc[("DeepLabV3+ R-50 †", 512, 80000, "Urban"), "Drop"] == 80.0


def test_the_2x2_table_keeps_schedules_apart_and_reads_ms_flip() -> None:
    short = {"crop_size": 256, "lr_schd": 1000}
    records = [
        single_domain(DEEPLAB, "urban", 0.50, 0.40),
        single_domain(DEEPLAB, "urban", 0.30, 0.25, **short),
        single_domain(DEEPLAB, "rural", 0.35, 0.45, **short,
                      per_scene_miou_ms_flip={"urban": 0.36, "rural": 0.48}),
        # Evaluated on Test (no masks: no scores) or trained on both: left out.
        single_domain(FCN, "urban", None, None,
                      dataset={"root": "/data/LoveDA", "split": "Test", "scenes": ["urban", "rural"],
                               "n_images": 1796, "synthetic": False}),
    ]
    table = cross_domain_table(records)
    assert list(table.index) == [
        ("DeepLabV3+ R-50", 256, 1000, "Urban"),
        ("DeepLabV3+ R-50", 256, 1000, "Rural"),
        ("DeepLabV3+ R-50", 512, 80000, "Urban"),
    ]
    ms_flip = cross_domain_table(records, ms_flip=True)
    assert ms_flip.loc[("DeepLabV3+ R-50", 256, 1000, "Rural"), "Drop"] == 12.0
    assert math.isnan(ms_flip.loc[("DeepLabV3+ R-50", 256, 1000, "Urban"), "In-domain"])
    empty = cross_domain_table([make_record()])
    assert empty.empty and list(empty.columns) == list(CROSS_DOMAIN_COLUMNS)


def test_cross_domain_records_reads_the_folder_and_its_cross_domain_subfolder(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_run(results, make_record(DEEPLAB))  # the main table's run: not cross-domain
    mine = write_run(results, single_domain(FCN, "urban", 0.5, 0.4))
    published = write_run(results / CROSS_DOMAIN_SUBDIR, single_domain(DEEPLAB, "rural", 0.4, 0.5))
    broken = results / CROSS_DOMAIN_SUBDIR / "runs" / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{", encoding="utf-8")
    records, problems = cross_domain_records(results)
    assert sorted(r["_run_dir"] for r in records) == sorted([mine, published])
    assert len(problems) == 1 and problems[0].startswith(f"{CROSS_DOMAIN_SUBDIR}/runs/broken/metrics.json")
    # The cross-domain folder on its own is a results folder too.
    assert [r["_run_dir"] for r in cross_domain_records(results / CROSS_DOMAIN_SUBDIR)[0]] == [published]


@pytest.mark.slow
def test_the_comparison_notebook_renders_the_2x2_table(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "loveda", splits=("Val",), n=1, size=32)
    results = tmp_path / "results"
    write_run(results, make_record(FCN, root=tree))
    write_run(results / CROSS_DOMAIN_SUBDIR, single_domain(DEEPLAB, "urban", 0.5512, 0.4031, root=tree))
    write_run(results / CROSS_DOMAIN_SUBDIR, single_domain(DEEPLAB, "rural", 0.4218, 0.5004, root=tree))
    out = render_comparison(results, data_root=tree, max_tiles=1)
    nb = nbformat.read(out["notebook"], as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    (cell,) = [c for c in nb.cells if "cross_domain_table(" in c.source]
    html = "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)
    for value in ("55.12", "40.31", "14.81", "42.18", "50.04", "7.86", "Cross-domain", "Rural"):
        assert value in html
    assert "14.81" in out["html"].read_text(encoding="utf-8")
