"""The suite's cross-domain profile: two runs per model (trained on Urban, on Rural), each
evaluated on both domains' Val, and finished single-domain runs reused instead of run again."""

from __future__ import annotations

from pathlib import Path

import pytest
from record_factory import DEEPLAB, make_record, write_run

from loveda_utils.benchmark.profiles import PROFILES
from loveda_utils.benchmark.suite import plan
from loveda_utils.models.registry import models_tagged
from loveda_utils.paths import CROSS_DOMAIN_RESULTS_DIR
from loveda_utils.results.store import run_group_for
from loveda_utils.training.recipe import MMSEG


@pytest.fixture
def loveda_root(tmp_path: Path) -> Path:
    """A data root that is not the synthetic mini-LoveDA (planning reads no tile)."""
    root = tmp_path / "LoveDA"
    root.mkdir()
    return root


def single_domain_record(scene: str, eval_scenes: list[str], **overrides) -> dict:
    """A finished DeepLabV3+ R-50 run of the cross-domain profile's recipe, trained on ``scene``."""
    group = run_group_for(DEEPLAB[0], False, MMSEG.crop_size, MMSEG.max_steps, train_scenes=scene)
    config = {"model": DEEPLAB[0], "recipe": "mmseg", "train_scenes": scene, "limit_eval_images": None}
    dataset = {"root": "/data/LoveDA", "split": "Val", "scenes": eval_scenes, "n_images": 1669,
               "synthetic": False}
    return make_record(DEEPLAB, run_group=group, run_name=group, config=config, dataset=dataset,
                       crop_size=MMSEG.crop_size, lr_schd=MMSEG.max_steps, **overrides)


def test_two_jobs_per_model_with_their_train_and_eval_scenes(loveda_root: Path, tmp_path: Path) -> None:
    profile = PROFILES["cross-domain"]
    assert profile.recipe == "mmseg" and profile.results_dir == CROSS_DOMAIN_RESULTS_DIR
    models = models_tagged("cross-domain")
    assert models and list(profile.models) == models
    jobs = plan(profile, None, loveda_root, tmp_path / "results")
    assert [(j.model, j.params["train_scenes"]) for j in jobs] == [
        (m, scene) for m in models for scene in ("urban", "rural")
    ]
    for job in jobs:
        scene = job.params["train_scenes"]
        assert job.params["eval_scenes"] == "both" and job.params["eval_split"] == "val"
        assert job.params["recipe"] == "mmseg" and job.params["max_steps"] == MMSEG.max_steps
        assert job.run_group == f"{job.model}-loveda-{scene}-{MMSEG.crop_size}px-{MMSEG.max_steps}it"
        assert job.status == "pending" and job.run_dir.name == job.params["run_name"] == job.run_group
        assert job.label == f"{job.model} (train_scenes={scene})"
    assert len({j.run_dir for j in jobs}) == len(jobs)


def test_a_finished_single_domain_run_is_reused(loveda_root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_run(results, make_record(DEEPLAB, crop_size=MMSEG.crop_size, lr_schd=MMSEG.max_steps))
    urban = write_run(results, single_domain_record("urban", ["urban", "rural"]))
    # Trained on Rural but evaluated on Rural only: it has no cross-domain score to give.
    rural_only = write_run(results, single_domain_record("rural", ["Rural"]))
    jobs = {j.params["train_scenes"]: j for j in plan("cross-domain", [DEEPLAB[0]], loveda_root, results)}
    assert jobs["urban"].status == "skipped" and jobs["urban"].run_dir == urban
    assert "already done" in jobs["urban"].message
    assert jobs["rural"].status == "pending"
    assert jobs["rural"].run_dir not in (urban, rural_only)
    assert jobs["rural"].run_dir.name == rural_only.name + "-r2"  # a fresh folder of its group
    # The run trained on both domains is the main table's: the mmseg profile's plan reuses it
    # and neither single-domain run.
    (mmseg,) = plan("mmseg", [DEEPLAB[0]], loveda_root, results)
    assert mmseg.status == "skipped" and mmseg.run_dir.name == run_group_for(
        DEEPLAB[0], False, MMSEG.crop_size, MMSEG.max_steps
    )
