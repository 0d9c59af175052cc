"""The README's LoveDA server workflow (issue #11): notebook 03 with ``eval_split=test`` and
``save_predictions=True`` writes its record (scores null, predictions counted), and
``export-submission RUN_DIR`` checks the predictions against the Test images and zips them."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from record_factory import make_record, write_run
from tiny_runs import MODEL, TINY, run_03

from loveda_utils.benchmark.suite import Profile, run_suite
from loveda_utils.cli import main as cli
from loveda_utils.data.classes import CLASS_NAMES
from loveda_utils.results.schema import validate_record
from loveda_utils.results.store import PREDICTIONS_ONLY_GROUP, run_group_for
from loveda_utils.results.table import latest_records

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def test_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tree, the run folder) of notebook 03 run as the README says, ms_flip left on."""
    from loveda_utils.data.synthetic import generate_mini_loveda

    tree = generate_mini_loveda(tmp_path_factory.mktemp("tiny") / "mini", tiles=4, size=64, seed=1)
    results = tmp_path_factory.mktemp("results")
    run_03(results / "03.ipynb", **TINY, model=MODEL, data_root=str(tree),
           results_dir=str(results), eval_split="test", save_predictions=True)
    (record_path,) = results.glob("runs/*/metrics.json")
    return tree, record_path.parent


def _test_images(tree: Path) -> dict[str, Path]:
    return {p.name: p for p in tree.glob("Test/*/images_png/*.png")}


def test_the_test_split_record_has_null_scores_and_counts_the_predictions(test_run) -> None:
    tree, run_dir = test_run
    record = json.loads((run_dir / "metrics.json").read_text())
    assert validate_record(record) == []
    n_test = len(_test_images(tree))
    assert n_test >= 2
    assert record["dataset"]["split"] == "Test" and record["dataset"]["n_images"] == n_test
    assert record["saved_predictions"] == n_test
    assert len(list((run_dir / "predictions" / "Test").glob("*/*.png"))) == n_test
    assert record["miou"] is None and record["accuracy"] is None and record["mean_f1"] is None
    assert record["per_class_iou"] == dict.fromkeys(CLASS_NAMES)
    assert record["per_scene_miou"] == {"urban": None, "rural": None} and record["miou_ci"] is None
    # ms+flip scores nothing on Test, and its predictions are not the ones exported: not run.
    assert record["miou_ms_flip"] is None and record["per_class_iou_ms_flip"] is None
    assert record["run_group"].endswith("-test") and run_dir.name == record["run_group"]
    assert record["train_segments"] == 1 and record["resumed_from_step"] is None


def test_a_test_run_never_replaces_the_scored_row() -> None:
    """Its run group differs from the scored run's of the same model and schedule."""
    scored = make_record(run_name="a", created="2025-01-01T00:00:00+00:00")
    test = make_record(run_name="b", created="2025-06-01T00:00:00+00:00",
                       run_group=scored["run_group"] + "-test")
    newest, superseded = latest_records([scored, test])
    assert {r["run_name"] for r in newest} == {"a", "b"} and superseded == []


def test_export_submission_zips_every_test_tile_at_its_size(test_run, capsys) -> None:
    tree, run_dir = test_run
    assert cli(["export-submission", str(run_dir)]) == 0  # the data root from config.yaml
    assert str(tree) in capsys.readouterr().out
    images = _test_images(tree)
    with zipfile.ZipFile(run_dir / "submission.zip") as zf:
        assert sorted(zf.namelist()) == sorted(images)
        for name in zf.namelist():
            labels = np.array(Image.open(io.BytesIO(zf.read(name))))
            with Image.open(images[name]) as image:
                assert labels.shape == (image.height, image.width)
            assert labels.min() >= 0 and labels.max() <= 6


def test_export_submission_refuses_a_wrong_size_and_a_missing_tile(test_run, tmp_path: Path,
                                                                  capsys) -> None:
    tree, run_dir = test_run
    copy = Path(shutil.copytree(run_dir, tmp_path / run_dir.name, ignore=shutil.ignore_patterns("*.zip")))
    first, second = sorted((copy / "predictions" / "Test").glob("*/*.png"))[:2]
    Image.fromarray(np.ones((16, 16), dtype=np.uint8)).save(first)
    assert cli(["export-submission", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{first.parent.name}/{first.name} is 16x16, its image 64x64" in err
    second.unlink()
    assert cli(["export-submission", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "have no prediction" in err and second.name in err
    assert not (copy / "submission.zip").exists()


def test_run_suite_on_the_test_split_runs_beside_the_scored_run(test_run, tmp_path: Path) -> None:
    """``run-suite --set eval_split=test``: the suite took the model's scored Val run for this
    run ("already done"), planning it in the scored run's group."""
    tree, _ = test_run
    results = tmp_path / "results"
    group = run_group_for(MODEL, True, TINY["crop_size"], TINY["max_steps"])
    scored = write_run(results, make_record(("lraspp_mobilenet_v3_large", "LRASPP", "MobileNetV3-L"),
                                            synthetic=True, root=tree, crop_size=TINY["crop_size"],
                                            lr_schd=TINY["max_steps"]))
    assert scored.name == group
    before = (scored / "metrics.json").read_bytes()
    profile = Profile(name="test", description="one tiny model", models={MODEL: {}},
                      params={**TINY, "ms_flip": False, "mem_steps": 0})
    lines: list[str] = []
    outcome = run_suite(profile, data_root=tree, results_dir=results, readme=None, render=False,
                        check=False, overrides={"eval_split": "test", "save_predictions": True},
                        log=lines.append)
    (job,) = outcome.jobs
    assert outcome.exit_code == 0 and job.status == "done", lines
    assert job.run_dir.name == group + PREDICTIONS_ONLY_GROUP
    assert job.message.startswith("no scores (predictions only)")
    record = json.loads((job.run_dir / "metrics.json").read_text())
    assert record["run_group"] == job.run_dir.name and record["miou"] is None
    assert record["saved_predictions"] == len(_test_images(tree))
    assert (scored / "metrics.json").read_bytes() == before
