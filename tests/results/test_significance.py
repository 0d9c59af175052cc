"""Which of our rows differ beyond tile-sampling noise: every pair over the same tiles, by the
paired bootstrap of their per-tile confusion matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_tree
from PIL import Image
from record_factory import (
    DEEPLAB,
    FCN,
    PSPNET,
    make_record,
    predictions_for,
    tile_confusion,
    write_per_tile,
    write_run,
)

from loveda_utils.data.classes import CLASS_NAMES
from loveda_utils.evaluation.bootstrap import BootstrapSettings
from loveda_utils.results.significance import paired_differences, paired_differences_markdown
from loveda_utils.results.store import load_records

UNET = ("unet_resnet18", "UNet", "R-18")


def _miou(tree: Path, predictions: dict) -> tuple[float, dict]:
    """The mIoU (and per-class IoU) ``predictions`` score on ``tree``, as the record states it."""
    total = sum(
        tile_confusion(np.array(Image.open(tree / s / sc / "masks_png" / n)), p)
        for (s, sc, n), p in predictions.items()
    )
    tp = np.diag(total)
    union = total.sum(0) + total.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    per_class = {c: None if np.isnan(v) else float(v) for c, v in zip(CLASS_NAMES, iou)}
    return float(np.nanmean(iou)), per_class


def _run(results: Path, tree: Path, model: tuple, predictions: dict, **overrides) -> Path:
    miou, per_class = _miou(tree, predictions)
    record = make_record(model, miou, root=tree, per_class_iou=per_class, **overrides)
    run = write_run(results, record)
    write_per_tile(run, tree, predictions)
    return run


@pytest.fixture
def results(tmp_path: Path) -> Path:
    tree = write_tree(tmp_path / "loveda", splits=("Val",), n=6, size=32)
    results = tmp_path / "results"
    good, worse = predictions_for(tree, wrong_from_row=28), predictions_for(tree, wrong_from_row=8)
    close = predictions_for(tree, wrong_from_row=27)
    _run(results, tree, DEEPLAB, good)
    _run(results, tree, PSPNET, worse)
    _run(results, tree, ("segformer_mit_b0", "SegFormer", "MiT-B0"), close)
    _run(results, tree, FCN, dict(list(good.items())[:4]))  # other tiles: not paired
    miou, _ = _miou(tree, good)
    write_run(results, make_record(UNET, miou, root=tree))  # no per-tile file
    _run(results, tree, DEEPLAB, good, synthetic=True, crop_size=64)  # synthetic: never compared
    return results


def test_paired_differences_of_every_pair_over_the_same_tiles(results: Path) -> None:
    records, problems = load_records(results)
    assert not problems
    df = paired_differences(records, settings=BootstrapSettings(500))
    assert len(df) == 3  # DeepLab, PSPNet, SegFormer pairwise; FCN, UNet and synthetic out
    assert list(df["difference"]) == sorted(df["difference"], reverse=True)
    assert (df["difference"] > 0).all()  # the higher-ranked row first
    by_pair = df.set_index("pair")
    far = by_pair.loc["DeepLabV3+ R-50 vs PSPNet R-101"]
    assert far["significant"] and far["low"] > 0 and far["tiles"] == 12
    near = by_pair.loc["DeepLabV3+ R-50 vs SegFormer MiT-B0"]
    assert near["low"] <= near["difference"] <= near["high"]
    assert far["miou_better"] == pytest.approx(100 * records_miou(records, DEEPLAB), abs=0.01)
    assert any("UNet R-18" in s and "per_tile_confusion.npz" in s for s in df.attrs["skipped"])
    assert any("FCN R-50" in u and "different tiles" in u for u in df.attrs["unpaired"])
    assert not df.attrs["mismatched"]
    text = paired_differences_markdown(df)
    assert "| DeepLabV3+ R-50 (" in text and "| yes |" in text and "| 12 |" in text
    assert "left out: UNet R-18" in text and "not paired: " in text
    assert "†" not in text  # synthetic rows are never compared


def records_miou(records: list[dict], model: tuple) -> float:
    return next(
        r["miou"] for r in records if r["model"] == model[0] and not r["dataset"]["synthetic"]
    )


def test_a_per_tile_file_that_disagrees_with_its_record_is_named(results: Path) -> None:
    records, _ = load_records(results)
    for record in records:
        if record["model"] == PSPNET[0]:
            record["miou"] += 0.01  # as if the file came from another evaluation
    df = paired_differences(records, settings=BootstrapSettings(200))
    assert [m for m in df.attrs["mismatched"] if m.startswith("PSPNet R-101: its per_tile")]
    assert "**check**: PSPNet R-101" in paired_differences_markdown(df)


def test_no_pairs_yet(tmp_path: Path) -> None:
    write_run(tmp_path, make_record())
    df = paired_differences(load_records(tmp_path)[0])
    assert df.empty and "No two real LoveDA runs" in paired_differences_markdown(df)
