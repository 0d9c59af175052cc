"""Published reference rows as the report shows them: by split, sourced, marked, never ours."""

from __future__ import annotations

import pytest
from record_factory import make_record, published_row, server_row

from loveda_utils.data.classes import CLASS_NAMES
from loveda_utils.results.published import (
    PUBLISHED_MARK,
    fps_comparable,
    published_label,
    published_markdown,
    published_per_class_table,
)
from loveda_utils.results.references import load_references

V100 = "Tesla V100-SXM2-32GB"


def test_published_markdown_one_table_per_split_with_sources() -> None:
    rows = [
        server_row(),
        published_row(),
        published_row(method="PSPNet", backbone="R-101-D8", miou=0.5186, reference="pspnet doc"),
        server_row(method="FCN8S", backbone="VGG16", miou=0.467),  # same reference as above
    ]
    text = published_markdown(rows, heading="###")
    val, test = text.index("### LoveDA Val (published)"), text.index("### LoveDA Test (published)")
    assert "not run here" in text.split("###")[0]
    assert val < test  # Val before Test whatever the file's order
    val_table, test_table = text[val:test], text[test:]
    assert val_table.count(f"| LoveDA Val, {PUBLISHED_MARK} |") == 2
    assert test_table.count(f"| LoveDA Test, {PUBLISHED_MARK} |") == 2
    header = next(line for line in test_table.splitlines() if line.startswith("| Method"))
    # Test rows state no training or timing facts: those columns are left out of their table.
    assert header == "| Method | Backbone | mIoU | Data | Source |"
    assert "| Inf time (fps) |" in val_table and "| 6.00 | V100 | 50.99 | 50.65 |" in val_table
    # As published: 46.7 stays 46.7 (a source rounding to 0.1 is not given false digits).
    assert "| FCN8S | VGG16 | 46.7 |" in test_table
    # Every row points to its reference; one reference, one number.
    assert "| MMSegmentation model zoo [1] |" in val_table
    assert "| MMSegmentation model zoo [2] |" in val_table
    assert test_table.count("LoveDA paper [3]") == 2
    assert "- [2] pspnet doc" in text and "- [3] test-server scores" in text
    assert "No published reference rows" in published_markdown([])


def test_published_label_and_per_class_table() -> None:
    assert published_label(server_row()) == "PSPNet ResNet-50 (reported, Test)"
    table = published_per_class_table([published_row(), server_row()])
    assert list(table.columns) == [*CLASS_NAMES, "mIoU"]
    assert list(table.index) == ["PSPNet ResNet-50 (reported, Test)"]  # mIoU-only rows left out
    assert table.iloc[0]["building"] == pytest.approx(45.0)
    assert table.iloc[0]["mIoU"] == pytest.approx(48.3)


@pytest.mark.parametrize(
    "overrides, comparable",
    [
        ({"device": V100}, True),
        ({"device": "NVIDIA A100-SXM4-40GB"}, True),  # another GPU: the same device class
        ({"device": "CPU AMD EPYC 7B13 (2 threads)"}, False),
        ({"device": "Apple MPS"}, False),
        ({"device": V100, "amp": True}, False),
        ({"device": V100, "fps_size": 512}, False),
    ],
)
def test_fps_comparable(overrides: dict, comparable: bool) -> None:
    assert fps_comparable(make_record(**overrides)) is comparable


def test_the_shipped_rows() -> None:
    rows = load_references()
    text = published_markdown(rows)
    assert text.count(f"| LoveDA Val, {PUBLISHED_MARK} |") == 9  # MMSeg's zoo
    assert text.count(f"| LoveDA Test, {PUBLISHED_MARK} |") >= 4  # paper baselines, RVSA
    assert "| DeepLabV3+ | R-50-D8 | 512x512 | 80000 | 7.37 | 6.00 | V100 | 50.99 |" in text
    assert "RVSA" in text and "MMSegmentation model zoo" in text
