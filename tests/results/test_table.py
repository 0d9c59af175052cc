"""The MMSeg-style table: columns, formatting, selection, marks, footnotes from the records."""

from __future__ import annotations

from pathlib import Path

import pytest
from record_factory import DEEPLAB, FCN, PSPNET, make_record, write_run

from loveda_utils.data.classes import CLASS_NAMES
from loveda_utils.results.schema import field_named, validate_record
from loveda_utils.results.store import claim_run_dir, load_records
from loveda_utils.results.table import (
    MMSEG_COLUMNS,
    SYNTHETIC_MARK,
    TABLE_COLUMNS,
    build_table,
    interval_text,
    per_class_table,
    scene_table,
    split_by_data,
    table_markdown,
)


def test_table_columns_and_formatting(tmp_path: Path) -> None:
    assert [c for c in TABLE_COLUMNS if c in MMSEG_COLUMNS] == list(MMSEG_COLUMNS)
    for extra in ("Params (M)", "GMACs", "Inf time, fast (fps)", "Urban mIoU", "Rural mIoU", "Data"):
        assert extra in TABLE_COLUMNS
    deeplab = write_run(tmp_path, make_record(), notebook=True, checkpoint=True)
    write_run(tmp_path, make_record(PSPNET, 0.5186, miou_ms_flip=0.53456, mem_gb=None))
    records, _ = load_records(tmp_path)
    df = build_table(records, tmp_path)
    assert list(df.columns) == list(TABLE_COLUMNS)
    assert list(df["Method"]) == ["PSPNet", "DeepLabV3+"]  # mIoU descending
    row = df.set_index("Method").loc["DeepLabV3+"]
    assert row["mIoU"] == "50.99"
    assert row["mIoU(ms+flip)"] == "-"
    assert row["Mem (GB)"] == "7.37"
    assert row["Inf time (fps)"] == "6.00 ± 0.12"
    assert row["Crop Size"] == "512x512"
    assert row["Lr schd"] == "80000"
    assert row["Batch"] == "4xb4"  # 4 devices x 4 images, as MMSeg's config names
    assert row["Params (M)"] == "43.6"
    assert row["GMACs"] == "355.1"  # MMSeg's "GFLOPs": multiply-adds
    assert row["Inf time, fast (fps)"] == "14.87 ± 0.43"
    assert row["Urban mIoU"] == "52.99" and row["Rural mIoU"] == "47.99"
    assert row["Device"] == "Tesla V100-SXM2-32GB"
    assert row["Data"] == "LoveDA Val"
    assert row["config"] == f"[config](runs/{deeplab.name}/03_benchmark.ipynb)"
    assert row["download"] == f"[model](runs/{deeplab.name}/checkpoints/last.ckpt)"
    pspnet = df.set_index("Method").loc["PSPNet"]
    assert pspnet["mIoU(ms+flip)"] == "53.46" and pspnet["Mem (GB)"] == "-"
    assert pspnet["config"].endswith("/params.json)")  # no executed notebook in that run
    assert pspnet["download"] == "-"  # no checkpoint file

    raw = build_table(records, tmp_path, formatted=False)
    assert list(raw.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert raw.set_index("Method").loc["DeepLabV3+", "mIoU"] == pytest.approx(0.5099)
    assert raw.set_index("Method").loc["DeepLabV3+", "Batch"] == 16  # the global batch
    assert (
        raw.set_index("Method").loc["DeepLabV3+", "config"]
        == f"runs/{deeplab.name}/03_benchmark.ipynb"
    )


def test_latest_record_per_group_wins(tmp_path: Path) -> None:
    old = write_run(tmp_path, make_record(miou=0.40, created="2025-01-01T00:00:00+00:00"))
    new = write_run(tmp_path, make_record(miou=0.45, created="2025-03-01T00:00:00Z"))
    assert new.name == old.name + "-r2"
    records, _ = load_records(tmp_path)
    df = build_table(records, tmp_path)
    assert list(df["mIoU"]) == ["45.00"]
    assert df.attrs["superseded"] == [old.name]
    assert "1 older run(s) superseded" in table_markdown(df) and old.name in table_markdown(df)
    assert len(build_table(records, tmp_path, latest_only=False)) == 2


def test_synthetic_rows_are_marked(tmp_path: Path) -> None:
    write_run(tmp_path, make_record(FCN, 0.90, synthetic=True, crop_size=64, lr_schd=200))
    write_run(tmp_path, make_record(PSPNET, 0.5186))
    records, _ = load_records(tmp_path)
    df = build_table(records, tmp_path)
    # Real LoveDA first even though the synthetic number is higher.
    assert list(df["Data"]) == ["LoveDA Val", "mini-LoveDA (synthetic)"]
    assert list(df["Method"]) == ["PSPNet", f"FCN {SYNTHETIC_MARK}"]
    text = table_markdown(df)
    assert f"{SYNTHETIC_MARK} mini-LoveDA (synthetic)" in text and "not LoveDA results" in text
    only_real = table_markdown(build_table([r for r in records if r["model"] != FCN[0]]))
    assert SYNTHETIC_MARK not in only_real and "mini-LoveDA" not in only_real


def test_empty_table_says_no_runs(tmp_path: Path) -> None:
    df = build_table([], tmp_path)
    assert list(df.columns) == list(TABLE_COLUMNS) and df.empty
    assert "No runs yet" in table_markdown(df)


def test_per_class_and_scene_tables(tmp_path: Path) -> None:
    per_class_ms = {c: 0.6 for c in CLASS_NAMES}
    write_run(tmp_path, make_record(miou_ms_flip=0.6, per_class_iou_ms_flip=per_class_ms))
    write_run(tmp_path, make_record(PSPNET, 0.5186))
    records, _ = load_records(tmp_path)
    table = per_class_table(records)
    assert list(table.columns) == [*CLASS_NAMES, "mIoU"]
    assert list(table.index) == ["PSPNet R-101", "DeepLabV3+ R-50"]
    assert table.loc["DeepLabV3+ R-50", "road"] == pytest.approx(100 * (0.5099 - 0.03), abs=0.01)
    assert table.loc["DeepLabV3+ R-50", "mIoU"] == pytest.approx(50.99)
    with_ms = per_class_table(records, ms_flip=True)
    assert with_ms.loc["DeepLabV3+ R-50 (ms+flip)", "water"] == pytest.approx(60.0)
    assert len(with_ms) == 3
    scenes = scene_table(records)
    assert scenes.loc["PSPNet R-101", "Urban mIoU"] == pytest.approx(53.86)
    assert scenes.loc["PSPNet R-101", "Urban - Rural"] == pytest.approx(5.0)


# -- the mIoU's 95% interval ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, ci, text",
    [
        (0.5099, [0.5059, 0.5139], "± 0.40"),  # symmetric
        (0.5099, [0.5060, 0.5140], "± 0.41"),  # nearly: the larger half-width, never less
        (0.5099, [0.5000, 0.5140], "[50.00, 51.40]"),  # skewed: both bounds
        (0.5099, [0.5110, 0.5140], "[51.10, 51.40]"),  # an interval that misses the value
        (0.5099, None, "-"),  # a record made before the intervals
        (None, [0.1, 0.2], "-"),  # no mIoU
    ],
)
def test_interval_text(value: float | None, ci: list[float] | None, text: str) -> None:
    assert interval_text(value, ci) == text


def test_table_shows_the_records_interval() -> None:
    rows = [
        make_record(miou_ci=[0.5059, 0.5139], bootstrap={"resamples": 2000, "seed": 0,
                                                          "level": 0.95, "interval": "percentile"}),
        make_record(PSPNET, 0.5186, miou_ci=[0.5100, 0.5200], bootstrap=None),
        make_record(FCN, 0.42, miou_ci=None),
    ]  # fmt: skip
    df = build_table(rows)
    assert [c for c in TABLE_COLUMNS if c in MMSEG_COLUMNS] == list(MMSEG_COLUMNS)
    assert list(df.columns).index("mIoU 95% CI") == list(df.columns).index("mIoU") + 1
    assert list(df["mIoU"]) == ["51.86", "50.99", "42.00"]  # the mIoU itself as MMSeg prints it
    assert list(df["mIoU 95% CI"]) == ["[51.00, 52.00]", "± 0.40", "-"]
    raw = build_table(rows, formatted=False)
    assert raw.loc[raw["Method"] == "DeepLabV3+", "mIoU 95% CI"].item() == [0.5059, 0.5139]
    assert raw.loc[raw["Method"] == "FCN", "mIoU 95% CI"].item() is None
    note = next(n for n in df.attrs["protocol"] if n.startswith("mIoU 95% CI"))
    assert "95% percentile bootstrap over the evaluated tiles, 2000 resamples, seed 0" in note
    # PSPNet's record states no settings: its rows are named apart.
    assert "bootstrap over the evaluated tiles, settings not recorded (PSPNet R-101); 95%" in note
    assert "seed 0 (DeepLabV3+ R-50)" in note
    assert "`-`: no interval in the record of FCN R-50" in note
    none = build_table([make_record(miou_ci=None)]).attrs["protocol"]
    assert any("these records hold no bootstrap interval" in n for n in none)


def test_split_by_data() -> None:
    real, synthetic = split_by_data([make_record(), make_record(FCN, 0.3, synthetic=True)])
    assert [r["model"] for r in real] == [DEEPLAB[0]]
    assert [r["model"] for r in synthetic] == [FCN[0]]


# -- the protocol footnote -------------------------------------------------------------------------


def _protocol(records: list[dict]) -> str:
    """The footnote lines of a table of ``records`` (no other notes)."""
    return "\n".join(build_table(records).attrs["protocol"])


def test_protocol_footnote_states_the_recorded_settings() -> None:
    same = [make_record(), make_record(PSPNET, 0.5186)]
    text = _protocol(same)
    assert "on Val (1669 tiles), whole-tile inference" in text
    assert "MMSeg's definition (tools/analysis_tools/benchmark.py: fp32, NCHW" in text
    assert "over 195 images after 5 warm-up, 1024x1024." in text
    assert "Inf time, fast: the same timing under this package's inference settings (not " \
        "MMSeg's figure): fp16 autocast, channels-last, cudnn.benchmark off." in text
    assert "torch.cuda.max_memory_allocated over 3 steps training 4 images of 512x512 in " \
        "32-true (sgd) in a fresh process" in text
    assert "one forward pass at 1x3x1024x1024" in text
    assert "ms+flip" not in text  # no row has it
    # Settings read from the records, not assumed: another timing size, FLOPs size, split...
    other = make_record(
        fps_size=512, fps_images=20, fps_warmup=2, flops_size=512, mem_source="peak RSS",
        fps_fast_settings={"precision": "bf16", "channels_last": False, "cudnn_benchmark": True},
        mem_protocol={**make_record()["mem_protocol"], "crop": 256, "steps": 2},
        eval_mode="slide", miou_ms_flip=0.52,
        dataset={**make_record()["dataset"], "split": "Train", "n_images": 12},
        config={"slide_window": 512, "slide_stride": 384},
    )  # fmt: skip
    text = _protocol([other])
    assert "on Train (12 tiles), sliding-window inference (512 px windows, stride 384 px)" in text
    assert "over 20 images after 2 warm-up, 512x512." in text
    assert "bf16 autocast, NCHW, cudnn.benchmark on" in text
    assert "peak RSS over 2 steps training 4 images of 256x256" in text
    assert "one forward pass at 1x3x512x512" in text and "1024" not in text
    assert "mIoU(ms+flip): mean softmax over scales 0.5, 0.75, 1, 1.25, 1.5, 1.75" in text
    assert "not run for" not in text


def test_the_batch_column_and_footnote_show_a_one_gpu_row_against_mmsegs_16() -> None:
    """A row trained on one GPU (the suite's default) sees 4 images a step, not MMSeg's 16: the
    table says so, and the footnote names the training precision of each row."""
    one_gpu = make_record(PSPNET, 0.5186, devices=1, precision="bf16-mixed")
    rows = [make_record(), one_gpu]
    table = build_table(rows).set_index("Method")
    assert table.loc["PSPNet", "Batch"] == "1xb4" and table.loc["DeepLabV3+", "Batch"] == "4xb4"
    text = _protocol(rows)
    assert ("Batch: devices x training images per device, as MMSeg's config names write it (its "
            "LoveDA rows: 4xb4, 16 images per step, in fp32); trained as 1xb4 in bf16-mixed "
            "(PSPNet R-101); 4xb4 in 16-mixed (DeepLabV3+ R-50).") in text
    assert "fidelity fast" not in text  # MMSeg's transforms, as every row here
    fast = make_record(config={**make_record()["config"], "fidelity": "fast"})
    assert "trained as 4xb4 in 16-mixed with torchvision's faster training transforms " \
        "(fidelity fast, not MMSeg's)." in _protocol([fast])
    # A checkpoint only evaluated here records no devices: the images per device alone.
    evaluated = make_record(devices=None)
    assert build_table([evaluated]).iloc[0]["Batch"] == "b4"


def test_protocol_footnote_names_rows_whose_settings_differ() -> None:
    rows = [
        make_record(miou_ms_flip=0.55),
        make_record(PSPNET, 0.5186, fps_size=512, mem_gb=None, mem_source=None),
    ]
    text = _protocol(rows)
    assert (
        "195 images after 5 warm-up, 512x512 (PSPNet R-101); "
        "195 images after 5 warm-up, 1024x1024 (DeepLabV3+ R-50)"
    ) in text
    assert "Mem (GB): peak training memory in GiB: not measured (PSPNet R-101)" in text
    assert "horizontally; not run for PSPNet R-101." in text
    # The same settings everywhere else: stated once, without row names.
    assert "one forward pass at 1x3x1024x1024." in text
    # Shown in the markdown, and left out on request.
    assert text.splitlines()[0] in table_markdown(build_table(rows))
    assert "forward pass" not in table_markdown(build_table(rows), protocol=False)


def _schema_1(record: dict) -> dict:
    """``record`` as a schema-1 run wrote it: without the fields schema 2 added."""
    return {k: v for k, v in record.items() if field_named(k).since == 1} | {"schema": 1}


def test_protocol_footnote_says_which_rows_were_measured_before_mmsegs_definitions() -> None:
    old = _schema_1(make_record(PSPNET, 0.5186, amp=True, fps_images=200))
    assert validate_record(old) == []
    text = _protocol([old])
    assert "the median per-image speed of forward + argmax, normalisation included: over 200 " \
        "images of 1024x1024, mixed precision (autocast)." in text
    assert "MMSeg's definition" not in text and "Inf time, fast" not in text
    assert "torch.cuda.max_memory_allocated of the run's own training, batch 4 per device, 16-mixed" in text
    assert "pooling): not counted (the record predates the field)." in text
    text = _protocol([make_record(), old])
    assert "timed images / their total time), except PSPNet R-101 (recorded before: the " \
        "median per-image speed" in text
    row = build_table([make_record(), old]).set_index("Method").loc["PSPNet"]
    assert row["GMACs"] == "-" and row["Inf time, fast (fps)"] == "-"


# -- no local absolute path in a table -------------------------------------------------------------


def test_links_are_relative_without_a_results_dir(tmp_path: Path) -> None:
    run = write_run(tmp_path / "results", make_record(), notebook=True, checkpoint=True)
    records, _ = load_records(tmp_path / "results")
    df = build_table(records)  # no results_dir: relative to the records' own results folder
    assert df.loc[0, "config"] == f"[config](runs/{run.name}/03_benchmark.ipynb)"
    assert df.loc[0, "download"] == f"[model](runs/{run.name}/checkpoints/last.ckpt)"


def test_absolute_record_paths_do_not_leak(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    record = make_record(
        DEEPLAB,
        root=elsewhere / "LoveDA",
        checkpoint=str(elsewhere / "ckpt" / "model.ckpt"),
        config={"data_root": str(elsewhere / "LoveDA"), "results_dir": str(elsewhere)},
    )
    write_run(tmp_path / "results", record, notebook=True)
    broken = claim_run_dir(tmp_path / "results", "broken")
    (broken / "metrics.json").write_text("{", encoding="utf-8")
    records, problems = load_records(tmp_path / "results")
    for df in (
        build_table(records, tmp_path / "results"),
        build_table(records, tmp_path / "results", formatted=False),
        build_table(records),
    ):
        text = table_markdown(df, problems) + df.to_csv(index=False)
        assert str(tmp_path) not in text and "elsewhere" not in text
        assert "`runs/broken/metrics.json: not valid JSON" in text  # named, relatively
