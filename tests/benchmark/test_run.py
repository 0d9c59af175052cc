"""The benchmark product: 03 through papermill, records, the suite, estimate, the rendered comparison."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nbformat
import numpy as np
import papermill as pm
import pytest
from PIL import Image
from tiny_runs import MODEL, TINY, run_03

from loveda_utils.benchmark.config import parameter_defaults, read_benchmark_config
from loveda_utils.benchmark.estimate import estimate
from loveda_utils.benchmark.profiles import Profile
from loveda_utils.benchmark.suite import run_suite
from loveda_utils.cli import main as cli
from loveda_utils.data.classes import raw_to_train
from loveda_utils.evaluation.metrics import ConfusionMatrix
from loveda_utils.paths import NOTEBOOKS_DIR
from loveda_utils.results.schema import validate_record
from loveda_utils.results.store import load_records
from loveda_utils.training.recipe import CONFIG_FILE

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def tiny_mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loveda_utils.data.synthetic import generate_mini_loveda

    return generate_mini_loveda(tmp_path_factory.mktemp("tiny") / "mini", tiles=2, size=64, seed=1)


@pytest.fixture(scope="module")
def first_run(tiny_mini: Path, tmp_path_factory: pytest.TempPathFactory):
    results = tmp_path_factory.mktemp("results")
    run_03(results / "03.ipynb", model=MODEL, data_root=str(tiny_mini), results_dir=str(results),
           save_predictions=True, **TINY)
    (record_path,) = results.glob("runs/*/metrics.json")
    return results, record_path


def test_papermill_run_writes_a_complete_record(first_run, tiny_mini: Path) -> None:
    results, record_path = first_run
    record = json.loads(record_path.read_text())
    assert validate_record(record) == []
    assert record["model"] == MODEL and record["method"] == "LRASPP" and record["backbone"] == "MobileNetV3-L"
    assert record["dataset"] == {"root": str(tiny_mini), "split": "Val", "scenes": ["urban", "rural"],
                                 "n_images": 2, "synthetic": True}
    assert record["lr_schd"] == 2 and record["crop_size"] == 32 and record["fps_size"] == 64
    assert 0 <= record["miou"] <= 1 and record["miou_ms_flip"] is not None
    assert set(record["per_scene_miou"]) == {"urban", "rural"}
    assert record["fps"] > 0 and record["params_m"] > 1 and record["gflops"] > 0 and record["mem_gb"] > 0
    # MMSeg's definitions: fp32 timing, Mem from a probe at batch 4 in fp32 at the row's crop.
    assert record["amp"] is False and record["fps_warmup"] == 1 and record["fps_fast"] > 0
    assert record["gflops"] / 2 < record["gmacs"] < record["gflops"]
    assert record["mem_protocol"] == {"batch": 4, "crop": 32, "precision": "32-true", "steps": 3,
                                      "optimizer": "sgd", "cudnn_benchmark": True}
    assert record["mem_source"] == "peak RSS" and record["train_mem_gb"] > 0
    run_dir = record_path.parent
    assert (run_dir / "params.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert record["checkpoint"] == "checkpoints/last.ckpt"
    assert len(list((run_dir / "visuals").rglob("*.png"))) == 2
    assert list((run_dir / "logs").glob("version_0/metrics.csv"))
    # config.yaml gives back the config the record holds (which holds the resolved recipe).
    assert read_benchmark_config(run_dir / CONFIG_FILE).to_dict() == record["config"]
    assert record["config"]["recipe"] == "mmseg" and record["config"]["max_steps"] == 2


def test_record_miou_equals_recomputation_from_saved_predictions(first_run, tiny_mini: Path) -> None:
    results, record_path = first_run
    record = json.loads(record_path.read_text())
    predictions = sorted((record_path.parent / "predictions" / "Val").rglob("*.png"))
    assert len(predictions) == record["dataset"]["n_images"]
    cm = ConfusionMatrix()
    import torch

    for pred_path in predictions:
        scene = pred_path.parent.name
        raw_pred = np.array(Image.open(pred_path))
        assert raw_pred.min() >= 1 and raw_pred.max() <= 7  # raw LoveDA encoding
        mask = np.array(Image.open(tiny_mini / "Val" / scene / "masks_png" / pred_path.name))
        cm.update(torch.from_numpy(raw_pred.astype(np.int64) - 1), torch.from_numpy(raw_to_train(mask)))
    assert cm.compute().miou == pytest.approx(record["miou"], abs=1e-12)


def check_per_tile_file(record: dict, run_dir: Path, root: Path) -> np.ndarray:
    """The run's ``per_tile_confusion.npz`` against its record: the tiles' names, int64 counts
    that sum to the mIoUs the record states (exactly), and the record's intervals redrawn from
    the file. Returns the single-scale matrices."""
    from loveda_utils.evaluation.bootstrap import BootstrapSettings, bootstrap_miou_ci
    from loveda_utils.evaluation.metrics import scores_from_confusion
    from loveda_utils.evaluation.per_tile import PER_TILE_FILE, load_per_tile

    saved = load_per_tile(run_dir / PER_TILE_FILE)
    split = record["dataset"]["split"]
    expected = sorted(f"{split}/{p.parent.parent.name}/{p.name}"
                      for p in root.glob(f"{split}/*/masks_png/*.png"))
    if record["config"]["limit_eval_images"] is None:
        assert sorted(saved.single.names) == expected
    assert len(saved.single) == record["dataset"]["n_images"] and set(saved.single.names) <= set(expected)
    assert saved.single.confusion.dtype == np.int64
    assert saved.single.confusion.shape == (record["dataset"]["n_images"], 7, 7)
    scores = scores_from_confusion(saved.single.total())
    assert scores.miou == record["miou"]  # exactly: the same matrix behind the record
    assert dict(scores.per_class_iou) == record["per_class_iou"]
    bootstrap = record["bootstrap"]
    assert bootstrap["resamples"] == 2000 and bootstrap["seed"] == 0 and bootstrap["level"] == 0.95
    ci = list(bootstrap_miou_ci(saved.single.confusion, BootstrapSettings(bootstrap["resamples"], bootstrap["seed"])))
    assert record["miou_ci"] == ci and ci[0] <= record["miou"] <= ci[1]
    for scene, value in record["per_scene_miou"].items():
        tiles = saved.single.scene(scene)
        if value is None:
            assert len(tiles) == 0 and record["per_scene_miou_ci"][scene] is None
            continue
        assert scores_from_confusion(tiles.total()).miou == value
        low, high = record["per_scene_miou_ci"][scene]
        assert [low, high] == list(bootstrap_miou_ci(tiles.confusion)) and low <= value <= high
    if record["miou_ms_flip"] is None:
        assert saved.ms_flip is None
    else:
        assert saved.ms_flip is not None and saved.ms_flip.names == saved.single.names
        assert scores_from_confusion(saved.ms_flip.total()).miou == record["miou_ms_flip"]
        low, high = record["miou_ms_flip_ci"]
        assert low <= record["miou_ms_flip"] <= high
    return saved.single.confusion


def test_the_record_s_mious_come_from_its_per_tile_file(first_run, tiny_mini: Path) -> None:
    """Whole tiles and ms+flip: the file's matrices sum to the record's mIoUs exactly."""
    results, record_path = first_run
    record = json.loads(record_path.read_text())
    assert record["miou_ms_flip"] is not None
    check_per_tile_file(record, record_path.parent, tiny_mini)


def test_papermill_on_real_tiles_saves_the_tiles_behind_the_record(real_sample: Path, tmp_path: Path) -> None:
    """03 on the 16 real LoveDA tiles (the sample holds Train/Rural only: trained and scored
    there): per_tile_confusion.npz holds every tile, each tile's matrix is the one its saved
    prediction and its mask give, the sum is the record's mIoU and the interval holds it."""
    results = tmp_path / "results"
    run_03(tmp_path / "03.ipynb", model=MODEL, data_root=str(real_sample), results_dir=str(results),
           train_scenes="rural", eval_split="train", eval_scenes="rural", save_predictions=True,
           **TINY | {"max_steps": 4, "ms_flip": False, "fps_images": 1, "fps_warmup": 0,
                     "fps_size": 64, "mem_steps": 0, "visual_tiles": 0})
    (record_path,) = results.glob("runs/*/metrics.json")
    record = json.loads(record_path.read_text())
    assert record["dataset"]["synthetic"] is False and record["dataset"]["n_images"] == 16
    confusion = check_per_tile_file(record, record_path.parent, real_sample)
    from loveda_utils.evaluation.per_tile import PER_TILE_FILE, load_per_tile

    names = load_per_tile(record_path.parent / PER_TILE_FILE).single.names
    for index in (0, len(names) - 1):  # a tile's matrix, counted again from the files on disk
        split, scene, name = names[index].split("/")
        mask = np.array(Image.open(real_sample / split / scene / "masks_png" / name))
        pred = np.array(Image.open(record_path.parent / "predictions" / split / scene / name))
        keep = mask > 0
        counts = np.bincount((mask[keep].astype(np.int64) - 1) * 7 + pred[keep].astype(np.int64) - 1,
                             minlength=49).reshape(7, 7)
        assert np.array_equal(confusion[index], counts), names[index]


def test_rerun_from_config_yaml_leaves_the_first_record_intact(first_run, tmp_path: Path) -> None:
    """The first run's config.yaml, as papermill parameters (``-f``), reruns the same row."""
    import yaml

    results, record_path = first_run
    before = record_path.read_bytes()
    first_config = record_path.parent / CONFIG_FILE
    parameters = yaml.safe_load(first_config.read_text())
    run_03(tmp_path / "again.ipynb", **parameters | {"run_name": record_path.parent.name, "ms_flip": False})
    assert record_path.read_bytes() == before
    names = sorted(p.parent.name for p in results.glob("runs/*/metrics.json"))
    assert names == [record_path.parent.name, record_path.parent.name + "-r2"]
    second = read_benchmark_config(results / "runs" / names[1])
    expected = read_benchmark_config(first_config)
    assert second == dataclasses.replace(expected, run_name=record_path.parent.name, ms_flip=False)


def test_checkpoint_is_evaluated_instead_of_trained(first_run, tiny_mini: Path, tmp_path: Path) -> None:
    _, record_path = first_run
    ckpt = record_path.parent / "checkpoints" / "last.ckpt"
    results = tmp_path / "eval-only"
    nb = run_03(tmp_path / "ckpt.ipynb", model=MODEL, data_root=str(tiny_mini), results_dir=str(results),
                checkpoint=str(ckpt), ms_flip=False, **TINY)
    (path,) = results.glob("runs/*/metrics.json")
    record = json.loads(path.read_text())
    first = json.loads(record_path.read_text())
    assert record["lr_schd"] == 2 and record["train_mem_gb"] is None and record["miou_ms_flip"] is None
    assert record["mem_gb"] > 0 and record["mem_protocol"]["crop"] == 32  # MMSeg's Mem: a probe
    assert record["miou"] == pytest.approx(first["miou"])  # same weights, same tiles
    assert str(ckpt) in record["checkpoint"] and record["pretrained"] == "none"
    assert nb.metadata["papermill"]["parameters"]["checkpoint"] == str(ckpt)


@pytest.mark.parametrize(
    ("parameters", "ename", "message"),
    [
        ({"model": "unet_resnet9000"}, "UnknownModelError", "lraspp_mobilenet_v3_large"),
        ({"model": MODEL, "checkpoint": "/nonexistent/last.ckpt"}, "CheckpointError", "does not exist"),
        ({"model": MODEL, "crop_size": 512}, "ConfigError", "crop_size=512 is larger than the tiles"),
    ],
)
def test_bad_inputs_fail_with_their_message(parameters, ename, message, tiny_mini: Path, tmp_path: Path) -> None:
    params = {**TINY, **parameters, "data_root": str(tiny_mini), "results_dir": str(tmp_path / "r")}
    with pytest.raises(pm.PapermillExecutionError) as info:
        run_03(tmp_path / "bad.ipynb", **params)
    assert info.value.ename == ename and message in info.value.evalue


def test_suite_survives_a_failing_model_and_renders(tiny_mini: Path, tmp_path: Path) -> None:
    profile = Profile(
        name="test", description="two tiny models, one failing",
        models={MODEL: {}, "unet_resnet18_ssl4eo_moco": {"pretrained": "default"}},  # weights absent offline
        params={**TINY, "ms_flip": False},
    )
    results, lines = tmp_path / "suite", []
    # check=False: the pre-flight would refuse the model whose weights are absent on purpose.
    outcome = run_suite(profile, data_root=tiny_mini, results_dir=results, readme=None,
                        log=lines.append, check=False)
    assert outcome.exit_code == 1
    (failed,) = outcome.failed
    assert failed.model == "unet_resnet18_ssl4eo_moco" and "WeightsError" in failed.message
    assert str(failed.notebook) in failed.message and failed.notebook.is_file()
    # The whole reason, its fix at the end included (it was cut at 300 characters).
    assert "fetch it with `python -m loveda_utils fetch-weights" in failed.message
    assert "Or pass pretrained='none' or a path to a local state-dict file." in failed.message
    text = "\n".join(lines)
    assert "[1/2]" in text and "[2/2]" in text and "1 done, 0 skipped, 1 failed" in text
    assert (results / "benchmark.md").is_file() and (results / "04_results_comparison.html").is_file()
    table = (results / "benchmark.md").read_text()
    assert "LRASPP" in table and "mini-LoveDA (synthetic)" in table
    records, problems = load_records(results)
    assert len(records) == 1 and problems == []
    assert (records[0]["_run_dir"] / "03_benchmark.ipynb").is_file()

    # Re-run: the finished model is skipped, the failed one retried in its own folder.
    lines.clear()
    again = run_suite(profile, data_root=tiny_mini, results_dir=results, readme=None, render=False,
                      log=lines.append, check=False)
    assert [j.status for j in again.jobs] == ["skipped", "failed"]
    assert again.jobs[1].run_dir == failed.run_dir
    # --force: a new record beside the old one, never over it.
    first = (records[0]["_run_dir"] / "metrics.json").read_bytes()
    forced = run_suite(profile, models=[MODEL], data_root=tiny_mini, results_dir=results, force=True,
                       readme=None, render=False, log=lines.append, check=False)
    assert forced.exit_code == 0 and forced.jobs[0].run_dir.name.endswith("-r2")
    assert (records[0]["_run_dir"] / "metrics.json").read_bytes() == first


def test_damaged_record_is_reported_not_fatal(first_run, tmp_path: Path, capsys) -> None:
    import shutil

    results, record_path = first_run
    copy = tmp_path / "copy"
    shutil.copytree(results / "runs", copy / "runs")
    damaged = copy / "runs" / "broken"
    damaged.mkdir()
    (damaged / "metrics.json").write_text('{"model": "x", ')
    assert cli(["report", "--results-dir", str(copy), "--no-readme"]) == 0
    captured = capsys.readouterr()
    assert "LRASPP" in captured.out and "broken/metrics.json" in captured.out + captured.err


def test_estimate_projects_the_schedule(tiny_mini: Path) -> None:
    profile = Profile(name="t", description="", models={MODEL: {}},
                      params={**TINY, "max_steps": 1000, "ms_flip": True})
    table = estimate(profile, data_root=tiny_mini, steps=3, log=lambda _: None)
    row = table.iloc[0]
    assert "error" not in table or not isinstance(row.get("error"), str)
    assert row.s_per_iter > 0 and row.train_hours == pytest.approx(row.s_per_iter * 1000 / 3600)
    assert row.params_m > 1 and row.peak_mem_gb > 0 and row.lr_schd == 1000
    assert row.eval_precision == "fp32"  # the table's evaluation precision (eval_amp off)
    from loveda_utils.benchmark.measure import count_complexity
    from loveda_utils.models import build_model

    counted = count_complexity(build_model(MODEL), TINY["flops_size"])  # as the record counts
    assert (row.gmacs, row.gflops, row.flops_size) == (counted.gmacs, counted.gflops, 64)


def test_estimate_covers_the_eo_transformers_without_their_weights(tiny_mini: Path) -> None:
    """The mmseg profile's EO entries default to torchgeo weights, absent here: estimate times
    them from random weights (the cost is the same) and reports parameters, FLOPs and memory."""
    models = ["upernet_swin_v2_t_satlas_s2", "upernet_vit_b16_dofa"]
    overrides = {"crop_size": 32, "batch_size": 2, "flops_size": 64, "num_workers": 0,
                 "ms_flip": False}
    table = estimate("mmseg", models=models, data_root=tiny_mini, steps=2, overrides=overrides,
                     log=lambda _: None)
    assert "error" not in table, table.get("error")
    assert list(table["model"]) == models
    assert (table["params_m"] > 25).all() and (table["peak_mem_gb"] > 0).all()
    assert (table["gmacs"] > 0).all() and (table["gflops"] > table["gmacs"]).all()
    assert (table["flops_size"] == 64).all() and (table["lr_schd"] == 80_000).all()


def test_notebook_parameters_match_the_config() -> None:
    """The parameters cell lists every parameter (BenchmarkConfig's own fields, ``recipe`` and
    each recipe field) with the same default, and the names DESIGN.md section 4 documents."""
    import ast

    nb = nbformat.read(NOTEBOOKS_DIR / "03_benchmark.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    values = {node.targets[0].id: ast.literal_eval(node.value)
              for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)}
    assert values == parameter_defaults()
    documented = ("model data_root train_scenes eval_scenes eval_split pretrained checkpoint max_steps "
                  "batch_size crop_size lr ms_flip fps_images limit_eval_images seed accelerator devices "
                  "precision results_dir save_predictions run_name").split()
    assert set(documented) <= set(values)
