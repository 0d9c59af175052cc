"""Results records, run folders, the MMSeg-style table, the report and the comparison figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, write_tree
from PIL import Image

from loveda_utils import files
from loveda_utils.cli import main
from loveda_utils.data.classes import CLASS_NAMES
from loveda_utils.errors import ConfigError
from loveda_utils.files import write_json_atomic
from loveda_utils.results import records as results
from loveda_utils.results.records import (
    MMSEG_COLUMNS,
    README_END,
    README_START,
    SYNTHETIC_MARK,
    TABLE_COLUMNS,
    build_table,
    claim_run_dir,
    completed_runs,
    load_records,
    per_class_table,
    run_group_for,
    scene_table,
    table_markdown,
    validate_record,
    write_report,
)
from loveda_utils.visuals.plots import (
    plot_miou_vs_fps,
    plot_per_class_heatmap,
    plot_prediction_comparison,
    plot_scene_comparison,
)

# -- helpers ---------------------------------------------------------------------------------------

#: (model, method, backbone) of the registry entries used in the records below.
DEEPLAB = ("deeplabv3plus_resnet50", "DeepLabV3+", "R-50")
PSPNET = ("pspnet_resnet101", "PSPNet", "R-101")
FCN = ("fcn_resnet50", "FCN", "R-50")


def make_record(
    model: tuple[str, str, str] = DEEPLAB,
    miou: float = 0.5099,
    synthetic: bool = False,
    created: str = "2025-01-02T03:04:05+00:00",
    run_name: str | None = None,
    root: str | Path = "/data/LoveDA",
    **overrides: Any,
) -> dict[str, Any]:
    """A complete, valid record as the benchmark writes it (every CONTRACTS.md field)."""
    name, method, backbone = model
    crop, iters = overrides.pop("crop_size", 512), overrides.pop("lr_schd", 80000)
    group = run_group_for(name, synthetic, crop, iters)
    # Per-class values spread around the mIoU, so per-class tables have distinct numbers.
    per_class = {
        c: round(min(1.0, max(0.0, miou + 0.03 * (i - 3))), 4) for i, c in enumerate(CLASS_NAMES)
    }
    record = {
        "schema": 1,
        "run_name": run_name or group,
        "run_group": group,
        "status": "complete",
        "model": name,
        "method": method,
        "backbone": backbone,
        "pretrained": "imagenet",
        "crop_size": crop,
        "lr_schd": iters,
        "batch_size": 16,
        "mem_gb": 7.3712,
        "mem_source": "torch.cuda.max_memory_allocated",
        "fps": 6.0012,
        "fps_spread": 0.1234,
        "fps_size": 1024,
        "fps_images": 200,
        "device": "Tesla V100-SXM2-32GB",
        "precision": "16-mixed",
        "amp": False,
        "miou": miou,
        "miou_ms_flip": None,
        "accuracy": 0.71,
        "mean_f1": 0.66,
        "per_class_iou": per_class,
        "per_class_iou_ms_flip": None,
        "per_scene_miou": {"urban": round(miou + 0.02, 4), "rural": round(miou - 0.03, 4)},
        "per_scene_miou_ms_flip": None,
        "params_m": 43.5812,
        "gflops": 708.04,
        "dataset": {
            "root": str(root),
            "split": "Val",
            "scenes": ["Urban", "Rural"],
            "n_images": 1669,
            "synthetic": synthetic,
        },
        "train_seconds": 3600.0,
        "eval_seconds": 120.5,
        "checkpoint": "checkpoints/last.ckpt",
        "config": {"model": name, "max_steps": iters, "limit_eval_images": None},
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "versions": {"torch": "2.14.1", "torchgeo": "0.10.1"},
        "seed": 0,
        "created": created,
    }
    record.update(overrides)
    return record


def write_run(
    results_dir: Path,
    record: dict[str, Any],
    notebook: bool = False,
    checkpoint: bool = False,
    visuals: dict[tuple[str, str, str], np.ndarray] | None = None,
) -> Path:
    """A run folder as the benchmark leaves it: claimed, params.json, metrics.json, extras."""
    run_dir = claim_run_dir(results_dir, record["run_group"], record["run_name"])
    record["run_name"] = run_dir.name
    write_json_atomic(run_dir / "params.json", record["config"])
    if notebook:
        (run_dir / "03_benchmark.ipynb").write_text("{}", encoding="utf-8")
    if checkpoint:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    for (split, scene, name), raw in (visuals or {}).items():
        folder = run_dir / "visuals" / split / scene
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw.astype(np.uint8)).save(folder / name)
    write_json_atomic(run_dir / "metrics.json", record)
    return run_dir


def predictions_for(tree: Path, split: str = "Val", wrong_from_row: int = 16) -> dict:
    """Raw 1..7 predictions of every tile of ``tree/split``: the truth, wrong below a row."""
    out = {}
    for mask_path in sorted(tree.glob(f"{split}/*/masks_png/*.png")):
        raw = np.array(Image.open(mask_path))
        pred = np.where(raw == 0, 1, raw)  # every pixel is predicted (no 0)
        pred[wrong_from_row:] = pred[wrong_from_row:] % 7 + 1  # a different class: wrong
        out[(split, mask_path.parent.parent.name, mask_path.name)] = pred
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "loveda", splits=("Val",), n=2, size=32)


# -- run folders and atomic writes -----------------------------------------------------------------


def test_run_group_for() -> None:
    assert run_group_for("fcn_resnet50", True, 256, 200) == "fcn_resnet50-mini-256px-200it"
    assert run_group_for("fcn_resnet50", False, 512, 80000) == "fcn_resnet50-loveda-512px-80000it"


def test_claim_run_dir_never_reuses_a_folder(tmp_path: Path) -> None:
    first = claim_run_dir(tmp_path, "grp")
    (first / "metrics.json").write_text("keep", encoding="utf-8")
    second = claim_run_dir(tmp_path, "grp")
    assert [first.name, second.name] == ["grp", "grp-r2"]
    assert first.parent == tmp_path / "runs"
    # An explicit name that is taken also gets a suffix: never written into.
    assert claim_run_dir(tmp_path, "grp", "mine").name == "mine"
    assert claim_run_dir(tmp_path, "grp", "mine").name == "mine-r2"
    assert claim_run_dir(tmp_path, "grp", "grp").name == "grp-r3"
    assert (first / "metrics.json").read_text(encoding="utf-8") == "keep"
    # Parents are created.
    assert claim_run_dir(tmp_path / "a" / "b", "grp").is_dir()
    with pytest.raises(ConfigError, match="run_name"):
        claim_run_dir(tmp_path, "grp", "../escape")
    with pytest.raises(ConfigError, match="run_group"):
        claim_run_dir(tmp_path, "has space")


def test_claim_run_dir_concurrent_claims_are_distinct(tmp_path: Path) -> None:
    claimed: list[Path] = []
    barrier = threading.Barrier(6)

    def claim() -> None:
        barrier.wait()
        claimed.append(claim_run_dir(tmp_path, "grp"))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in claimed) == sorted(["grp"] + [f"grp-r{i}" for i in range(2, 7)])


def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(
        path, {"miou": float("nan"), "fps": np.float32(2.5), "dir": tmp_path, "n": np.int64(3)}
    )
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == {"miou": None, "fps": 2.5, "dir": str(tmp_path), "n": 3}
    assert text.startswith('{\n  "miou": null')  # indent 2
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_write_json_atomic_keeps_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"v": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object()})  # not serialisable
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["metrics.json"]

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"v": 2})  # fails after the temp file was written
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["metrics.json"]


# -- records ---------------------------------------------------------------------------------------


def test_validate_record() -> None:
    assert validate_record(make_record()) == []
    record = make_record()
    del record["fps"]
    record["crop_size"] = "512"
    record["miou"] = 50.99  # percent by mistake
    record["per_class_iou"]["road"] = -0.1
    record["schema"] = 2
    record["dataset"]["synthetic"] = "no"
    problems = "\n".join(validate_record(record))
    assert "missing field 'fps'" in problems
    assert "crop_size is str" in problems
    assert "miou = 50.99 is outside [0, 1]" in problems
    assert "per_class_iou['road']" in problems
    assert "schema is 2" in problems
    assert "dataset.synthetic" in problems
    # A checkpoint evaluated here (no training), outside a git checkout: still valid.
    evaluated = make_record(
        lr_schd=0, mem_gb=None, mem_source=None, precision=None, git_commit=None
    )
    assert validate_record(evaluated) == []
    assert validate_record([1]) == ["a record must be a JSON object, got list"]
    bad = make_record(lr_schd=True)  # a bool is not an int
    assert any("lr_schd" in p for p in validate_record(bad))


def test_load_records_reports_damaged_records(tmp_path: Path) -> None:
    good = write_run(tmp_path, make_record())
    write_run(tmp_path, make_record(PSPNET, 0.5186))
    bad_json = claim_run_dir(tmp_path, "broken-json")
    (bad_json / "metrics.json").write_text('{"schema": 1, "miou": ', encoding="utf-8")
    missing = make_record(FCN)
    del missing["per_class_iou"]
    missing_dir = write_run(tmp_path, missing)
    claim_run_dir(tmp_path, "still-running")  # no metrics.json yet: not a problem

    records, problems = load_records(tmp_path)
    assert sorted(r["model"] for r in records) == ["deeplabv3plus_resnet50", "pspnet_resnet101"]
    assert {r["_run_dir"] for r in records} >= {good}
    assert len(problems) == 2
    assert any(str(bad_json / "metrics.json") in p and "not valid JSON" in p for p in problems)
    assert any(str(missing_dir / "metrics.json") in p and "per_class_iou" in p for p in problems)
    # The rest still renders, with the damaged files listed.
    text = table_markdown(build_table(records, tmp_path), problems)
    assert "PSPNet" in text and "2 damaged record(s)" in text and "broken-json" in text
    with pytest.raises(ConfigError, match="results_dir"):
        load_records(tmp_path / "nope")


def test_completed_runs(tmp_path: Path) -> None:
    first = write_run(tmp_path, make_record(created="2025-01-01T00:00:00+00:00"))
    second = write_run(tmp_path, make_record(created="2025-01-02T00:00:00+00:00"))
    write_run(tmp_path, make_record(PSPNET))
    broken = claim_run_dir(tmp_path, make_record()["run_group"])
    (broken / "metrics.json").write_text("{", encoding="utf-8")
    assert completed_runs(tmp_path, make_record()["run_group"]) == [first, second]
    assert completed_runs(tmp_path, "nothing") == []


# -- the table -------------------------------------------------------------------------------------


def test_table_columns_and_formatting(tmp_path: Path) -> None:
    assert [c for c in TABLE_COLUMNS if c in MMSEG_COLUMNS] == list(MMSEG_COLUMNS)
    for extra in ("Params (M)", "GFLOPs", "Urban mIoU", "Rural mIoU", "Data"):
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
    assert row["Params (M)"] == "43.6"
    assert row["GFLOPs"] == "708.0"
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


# -- the report and README -------------------------------------------------------------------------


README = (
    "# LoveDA benchmark\r\n\r\nIntro with trailing spaces   \r\n\r\n"
    f"{README_START}\r\nold table\r\n{README_END}\r\n\r\n## After\r\nkeep me \u00e9\r\n"
)


def test_write_report(tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    run = write_run(results_dir, make_record(), checkpoint=True)
    write_run(results_dir, make_record(FCN, 0.31, synthetic=True, crop_size=64, lr_schd=200))
    readme = tmp_path / "README.md"
    readme.write_bytes(README.encode("utf-8"))
    written = write_report(results_dir, readme=readme)
    assert written == {
        "markdown": results_dir / "benchmark.md",
        "csv": results_dir / "benchmark.csv",
        "readme": readme,
    }
    md = written["markdown"].read_text(encoding="utf-8")
    assert "| 50.99 |" in md and f"FCN {SYNTHETIC_MARK}" in md
    assert f"(runs/{run.name}/checkpoints/last.ckpt)" in md
    csv = pd.read_csv(written["csv"])
    assert csv.loc[csv["Method"] == "DeepLabV3+", "mIoU"].item() == pytest.approx(0.5099)
    assert csv.loc[csv["Method"] == "FCN", "synthetic"].item()
    # Everything outside the markers is byte-identical; links are relative to the README.
    new = readme.read_bytes()
    head, tail = (
        README.encode().split(README_START.encode())[0],
        README.encode().split(README_END.encode())[1],
    )
    assert new.startswith(head + README_START.encode()) and new.endswith(README_END.encode() + tail)
    section = new.decode()[new.decode().index(README_START) : new.decode().index(README_END)]
    assert "old table" not in section and "| 50.99 |" in section
    assert f"(results/runs/{run.name}/checkpoints/last.ckpt)" in section
    # Rerunning is idempotent.
    write_report(results_dir, readme=readme)
    assert readme.read_bytes() == new
    assert not [p for p in results_dir.iterdir() if p.name.endswith(".tmp")]


def test_write_report_refuses_readme_without_markers(tmp_path: Path) -> None:
    write_run(tmp_path / "results", make_record())
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        write_report(tmp_path / "results", readme=readme)
    assert (
        str(readme) in str(err.value)
        and README_START in str(err.value)
        and README_END in str(err.value)
    )
    assert readme.read_text(encoding="utf-8") == "# no markers here\n"
    assert not (tmp_path / "results" / "benchmark.md").exists()  # nothing half-done


def test_write_report_without_records(tmp_path: Path) -> None:
    written = write_report(tmp_path)
    assert "No runs yet" in written["markdown"].read_text(encoding="utf-8")
    assert list(pd.read_csv(written["csv"]).columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results_dir = tmp_path / "results"
    write_run(results_dir, make_record())
    broken = claim_run_dir(results_dir, "broken")
    (broken / "metrics.json").write_text("not json", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_bytes(README.encode("utf-8"))
    assert main(["report", "--results-dir", str(results_dir), "--readme", str(readme)]) == 0
    out, err = capsys.readouterr()
    assert "| DeepLabV3+ | R-50 |" in out and "1 damaged record(s)" in out
    assert str(broken / "metrics.json") in err
    assert "| 50.99 |" in readme.read_text(encoding="utf-8")
    assert main(["report", "--results-dir", str(tmp_path / "missing"), "--no-readme"]) == 2
    assert "does not exist" in capsys.readouterr().err
    readme.write_text("no markers\n", encoding="utf-8")
    assert main(["report", "--results-dir", str(results_dir), "--readme", str(readme)]) == 2
    assert README_START in capsys.readouterr().err


def test_report_cli_subprocess(tmp_path: Path) -> None:
    write_run(tmp_path, make_record(PSPNET, 0.5186))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loveda_utils",
            "report",
            "--results-dir",
            str(tmp_path),
            "--no-readme",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| PSPNet | R-101 |" in proc.stdout and "51.86" in proc.stdout
    assert (tmp_path / "benchmark.md").is_file() and (tmp_path / "benchmark.csv").is_file()


# -- figures ---------------------------------------------------------------------------------------


def _records_with_visuals(results_dir: Path, tree: Path) -> list[dict]:
    preds = predictions_for(tree)
    write_run(results_dir, make_record(root=tree), visuals=preds)
    write_run(results_dir, make_record(PSPNET, 0.5186, root=tree), visuals=preds)
    write_run(results_dir, make_record(FCN, 0.42, root=tree))  # no visuals
    write_run(
        results_dir, make_record(FCN, 0.9, synthetic=True, root=tree, crop_size=64), visuals=preds
    )
    return load_records(results_dir)[0]


def test_figures(tmp_path: Path, tree: Path) -> None:
    records = _records_with_visuals(tmp_path / "results", tree)
    fig = plot_per_class_heatmap(per_class_table(records))
    assert len(fig.axes) == 2 and len(fig.axes[0].images) == 1  # heatmap + colour bar
    assert fig.axes[0].images[0].get_array().shape == (4, len(CLASS_NAMES) + 1)
    fig = plot_scene_comparison(records)
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 2 * 4
    assert [p.get_hatch() or "" for p in fig.axes[0].patches].count("//") == 2  # synthetic
    fig = plot_miou_vs_fps(records)
    assert len(fig.axes) == 1 and len(fig.axes[0].collections) == 2  # real + synthetic
    assert fig.axes[0].get_xscale() == "log"
    plt.close("all")


def test_prediction_comparison_figure(tmp_path: Path, tree: Path) -> None:
    records = _records_with_visuals(tmp_path / "results", tree)
    fig = plot_prediction_comparison(tree, records, max_tiles=3)
    # 3 tiles x (image, truth, 2 predictions, 2 error maps); FCN runs are skipped and named.
    assert len(fig.axes) == 3 * 6
    assert sum(len(ax.images) for ax in fig.axes) == 3 * 6
    title = fig._suptitle.get_text()
    assert "FCN R-50 (no visuals)" in title and f"FCN R-50 {SYNTHETIC_MARK} (other data)" in title
    # The error map shows the wrong rows in red and the no-data in black.
    error = fig.axes[4].images[0].get_array()
    assert (error[20:] == (214, 39, 40)).all(axis=-1).any() and (error[:16] == (46, 160, 67)).all(
        axis=-1
    ).any()
    one = plot_prediction_comparison(tree, records, tiles=["Val/Urban/0.png"])
    assert len(one.axes) == 6
    assert len(plot_prediction_comparison(tree, records[:0]).axes) == 1  # nothing to show
    plt.close("all")


@pytest.mark.slow
def test_render_comparison(tmp_path: Path, tree: Path) -> None:
    results_dir = tmp_path / "results"
    _records_with_visuals(results_dir, tree)
    out = results.render_comparison(results_dir, data_root=tree, max_tiles=2)
    assert out == {
        "notebook": results_dir / "04_results_comparison.ipynb",
        "html": results_dir / "04_results_comparison.html",
    }
    nb = nbformat.read(out["notebook"], as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| PSPNet" in markdown and "not LoveDA results" in markdown
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
    html = out["html"].read_text(encoding="utf-8")
    assert html.count("data:image/png;base64") >= 4 and "DeepLabV3+" in html
    assert not list(results_dir.glob(".*.tmp*"))
