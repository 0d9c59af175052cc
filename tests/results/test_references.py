"""Tests of loveda_utils.results.references: the published results shipped with the package."""

from __future__ import annotations

import csv
import io
import os
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

from loveda_utils.data.classes import CLASS_NAMES
from loveda_utils.results.references import (
    REFERENCES_FILE,
    load_references,
    reference_text,
    references_frame,
)

#: The facts as collected for the project (beside the repository, never copied into tests).
SHARED = Path(
    os.environ.get(
        "LOVEDA_REFERENCES", REPO.parent / "shared" / "references" / "loveda_published.csv"
    )
)


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_shipped_facts_equal_the_shared_csv() -> None:
    if not SHARED.is_file():
        pytest.skip(f"shared references not present at {SHARED}")
    assert rows(reference_text()) == rows(SHARED.read_text(encoding="utf-8"))


def test_loader_returns_every_row_typed_with_its_source() -> None:
    raw = rows(reference_text())
    loaded = load_references()
    assert len(loaded) == len(raw) == 13
    zoo = [r for r in loaded if r.source == "MMSegmentation model zoo"]
    assert len(zoo) == 9 and {r.split for r in zoo} == {"Val"}
    assert {r.split for r in loaded if r not in zoo} == {"Test"}
    for row, line in zip(loaded, raw, strict=True):
        assert row.source and row.reference and row.reference != "as above"
        assert row.miou == pytest.approx(float(line["miou"]) / 100, abs=1e-12)
        assert 0 < row.miou < 1
        assert set(row.per_class_iou) == set(CLASS_NAMES)
        for name in CLASS_NAMES:
            value = row.per_class_iou[name]
            assert (value is None) == (line[name] == "")
            if value is not None:
                assert value == pytest.approx(float(line[name]) / 100, abs=1e-12)
    deeplab = next(r for r in zoo if r.backbone == "R-50-D8")
    assert (deeplab.method, deeplab.crop_size, deeplab.lr_schd) == ("DeepLabV3+", 512, 80000)
    assert (deeplab.mem_gb, deeplab.fps, deeplab.device) == (7.37, 6.00, "V100")
    assert deeplab.miou_ms_flip == pytest.approx(0.5065)
    paper = [r for r in loaded if r.source.startswith("LoveDA paper")]
    assert paper[1].reference == paper[0].reference  # "as above" resolved
    assert all(r.crop_size is None and r.fps is None for r in paper)


def test_frame_has_one_column_per_fact() -> None:
    frame = references_frame()
    assert len(frame) == 13
    assert {"source", "split", "method", "backbone", "miou", "miou_ms_flip", "reference"} <= set(
        frame.columns
    )
    assert [c for c in frame.columns if c.startswith("iou_")] == [f"iou_{c}" for c in CLASS_NAMES]
    assert str(frame["crop_size"].dtype) == "Int64"
    assert frame["miou"].max() < 1


def test_the_file_is_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    data = config["tool"]["setuptools"]["package-data"]
    assert REFERENCES_FILE in data["loveda_utils.results"]
