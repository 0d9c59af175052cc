"""Interrupted benchmark runs (issue #11): notebook 03 resumes a run folder's ``last.ckpt`` and
its record states the whole training; a damaged ``last.ckpt`` stops the notebook and the suite
with what to do, and ``--force`` starts afresh."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import tiny_runs
import torch
from tiny_runs import MODEL, InterruptAt, run_03

from loveda_utils.benchmark.config import BenchmarkConfig
from loveda_utils.benchmark.profiles import Profile
from loveda_utils.benchmark.suite import run_suite
from loveda_utils.results.schema import validate_record
from loveda_utils.results.store import RUNS_DIR, run_group_for
from loveda_utils.training.segments import SEGMENTS_KEY, TrainSegment
from loveda_utils.training.trainer import build_datamodule, fit

pytestmark = pytest.mark.slow

TINY = {**tiny_runs.TINY, "max_steps": 4, "visual_tiles": 0, "ms_flip": False}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loveda_utils.data.synthetic import generate_mini_loveda

    return generate_mini_loveda(tmp_path_factory.mktemp("tiny") / "mini", tiles=2, size=64, seed=1)


@pytest.fixture(scope="module")
def resumed(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A notebook run interrupted after 2 of its 4 steps, then run again under its run_name."""
    results = tmp_path_factory.mktemp("results")
    parameters = {**TINY, "model": MODEL, "data_root": str(tree), "results_dir": str(results),
                  "run_name": "resumed"}
    run_dir = results / RUNS_DIR / "resumed"
    run_dir.mkdir(parents=True)
    recipe = BenchmarkConfig.from_params(parameters).training_recipe
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, build_datamodule(recipe, tree, num_workers=0), run_dir, model=MODEL,
            progress=False, extra_callbacks=[InterruptAt(2)])
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    run_03(results / "03.ipynb", **parameters)
    return run_dir


def test_a_resumed_run_records_its_whole_training(resumed: Path) -> None:
    record = json.loads((resumed / "metrics.json").read_text())
    assert validate_record(record) == []
    assert record["lr_schd"] == 4 and record["checkpoint"] == "checkpoints/last.ckpt"
    assert record["train_segments"] == 2 and record["resumed_from_step"] == 2
    checkpoint = torch.load(resumed / record["checkpoint"], weights_only=True)
    assert checkpoint["global_step"] == 4  # the checkpoint it names is the one the run wrote
    segments = [TrainSegment.from_dict(s) for s in checkpoint[SEGMENTS_KEY]]
    assert [(s.start_step, s.end_step) for s in segments] == [(0, 2), (2, 4)]
    assert record["train_seconds"] == pytest.approx(sum(s.seconds for s in segments))
    # The run's own training peak is the worst of its segments (mem_gb is MMSeg's probe).
    assert record["train_mem_gb"] == pytest.approx(max(s.peak_memory_gb for s in segments))
    assert record["final_loss"] == pytest.approx(segments[-1].final_loss)
    # Two logs, one per segment, none overwritten.
    assert sorted(p.name for p in (resumed / "logs").iterdir()) == ["version_0", "version_1"]


def test_a_damaged_last_ckpt_fails_the_suite_with_what_to_do_and_force_starts_afresh(
    resumed: Path, tree: Path, tmp_path: Path
) -> None:
    profile = Profile(name="test", description="one tiny model", models={MODEL: {}}, params=TINY)
    results = tmp_path / "suite"
    # An interrupted suite run whose last.ckpt was cut short (a full disk, a copy stopped).
    group = run_group_for(MODEL, True, TINY["crop_size"], TINY["max_steps"])
    damaged = results / RUNS_DIR / group / "checkpoints" / "last.ckpt"
    damaged.parent.mkdir(parents=True)
    good = (resumed / "checkpoints" / "last.ckpt").read_bytes()
    damaged.write_bytes(good[: len(good) // 2])
    lines: list[str] = []
    outcome = run_suite(profile, data_root=tree, results_dir=results, readme=None, render=False,
                        check=False, log=lines.append)
    (job,) = outcome.jobs
    assert outcome.exit_code == 1 and job.status == "failed" and job.run_dir == damaged.parents[1]
    assert job.message.startswith("CheckpointError") and str(damaged) in job.message
    (error,) = [o for c in nbformat.read(job.notebook, as_version=4).cells
                for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert error["ename"] == "CheckpointError" and str(damaged) in error["evalue"]
    assert "move it aside" in error["evalue"] and "run-suite --force" in error["evalue"]
    assert damaged.read_bytes() == good[: len(good) // 2]  # nothing lost

    forced = run_suite(profile, data_root=tree, results_dir=results, force=True, readme=None,
                       render=False, check=False, log=lines.append)
    (job,) = forced.jobs
    assert forced.exit_code == 0 and job.run_dir.name == f"{group}-r2"
    record = json.loads((job.run_dir / "metrics.json").read_text())
    assert record["train_segments"] == 1 and record["resumed_from_step"] is None
    assert damaged.read_bytes() == good[: len(good) // 2]
