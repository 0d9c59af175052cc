"""The suite on a cluster through submitit: the sbatch script SLURM gets, and a whole suite run
by submitit's local executor (real processes), one model preempted, requeued and resumed from
its checkpoint, both records in one results folder, the report built after both."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import tiny_runs
from submitit.core.utils import DelayedSubmission

from loveda_utils.benchmark.launch import ClusterLauncher, ModelJob, SlurmOptions
from loveda_utils.benchmark.profiles import Profile
from loveda_utils.benchmark.suite import plan, run_suite
from loveda_utils.cli import build_parser
from loveda_utils.cli import main as cli
from loveda_utils.errors import ConfigError
from loveda_utils.results.store import CHECKPOINT_FILE, METRICS_FILE, NOTEBOOK_FILE, load_records

PREEMPTED = "lraspp_mobilenet_v3_large"
OTHER = "unet_resnet18"
TINY = {**tiny_runs.TINY, "ms_flip": False}
OPTIONS = SlurmOptions(partition="gpu", account="proj42", qos="high", constraint="a100",
                       time_min=240, gpus_per_job=1, cpus_per_job=8, mem_gb=64, max_parallel=2,
                       max_requeues=5, setup=("module load cuda/12.4",),
                       sbatch={"mail-type": "END"})


@pytest.fixture(scope="module")
def tiny_mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loveda_utils.data.synthetic import generate_mini_loveda

    return generate_mini_loveda(tmp_path_factory.mktemp("tiny") / "mini", tiles=2, size=64, seed=1)


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``srun`` and ``sbatch`` on PATH; sbatch keeps each script it is given in the returned
    folder and answers like SLURM, so submitit's own submission code runs to the end."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" "{scripts}/$(ls {scripts} | wc -l).sh"\n'
        'echo "Submitted batch job 4242"\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


def test_the_sbatch_script_carries_every_option(fake_slurm: Path, tiny_mini: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    launcher = ClusterLauncher(OPTIONS)
    executor = launcher.executor(results)
    text = executor._executor._make_submission_file_text("COMMAND", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --qos=high",
                 "#SBATCH --constraint=a100", "#SBATCH --time=240", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB", "#SBATCH --mail-type=END",
                 "#SBATCH --signal=USR2@90", "#SBATCH --job-name=loveda-suite",
                 "module load cuda/12.4"):
        assert line in text.splitlines(), line
    assert f"{results}/submitit/%j/%j_0_log.out" in text
    assert executor._executor.max_num_timeout == 5

    # Two models: one sbatch call, a job array of two, each with its model's job pickled.
    profile = Profile(name="p", description="", models={PREEMPTED: {}, OTHER: {}}, params=TINY,
                      recipe="quick")
    jobs = plan(profile, None, tiny_mini, results)
    submitted = launcher.submit(executor, jobs)
    (script,) = fake_slurm.iterdir()
    assert "#SBATCH --array=0-1%2" in script.read_text().splitlines()
    assert [s.job_id for s in submitted] == ["4242_0", "4242_1"]
    for job, sub in zip(jobs, submitted):
        delayed = DelayedSubmission.load(sub.paths.submitted_pickle)
        assert isinstance(delayed.function, ModelJob) and delayed.function.job.model == job.model
        assert delayed.function.job.run_dir == job.run_dir
        assert delayed._timeout_countdown == 5  # requeues left after time limits


def test_without_slurm_the_launcher_says_where_to_submit(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(ConfigError, match="--launcher slurm: .*srun.*login node"):
        ClusterLauncher(OPTIONS).executor(tmp_path)


def test_run_suite_flags_make_the_options() -> None:
    from loveda_utils.cli import suite as cli_module

    args = build_parser().parse_args(
        ["run-suite", "--launcher", "slurm", "--partition", "gpu", "--account", "proj42",
         "--qos", "high", "--constraint", "a100", "--time", "240", "--gpus-per-job", "1",
         "--cpus-per-job", "8", "--mem-gb", "64", "--max-parallel", "2", "--max-requeues", "5",
         "--setup", "module load cuda/12.4", "--sbatch", "mail-type=END"])
    assert cli_module._slurm_options(args) == OPTIONS
    with pytest.raises(ConfigError, match="--time 0"):
        SlurmOptions(time_min=0)
    assert cli(["run-suite", "--launcher", "slurm", "--sbatch", "mail-type"]) == 2


def test_a_job_on_a_node_without_the_gpu_it_needs_fails_before_the_notebook(
    tiny_mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import loveda_utils.benchmark.launch as launch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launch, "execute_job", lambda job, gpu: pytest.fail("the notebook ran"))
    gpu_profile = Profile(name="g", description="", models={PREEMPTED: {}}, params=TINY,
                          recipe="mmseg")
    (job,) = plan(gpu_profile, None, tiny_mini, tmp_path / "results")
    done = ModelJob(job)()
    assert done.status == "failed" and done.message.startswith("pre-flight on ")
    assert "no CUDA device visible" in done.message and "--allow-cpu" in done.message


# -- a whole suite through submitit's local executor ----------------------------------------


def _descendants_running(run_dir: Path) -> tuple[psutil.Process, list[psutil.Process]] | None:
    """The submitit task running ``run_dir``'s notebook, and the notebook's processes
    (papermill and its kernel), found below this test's process."""
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
            if "papermill" in cmdline and str(run_dir) in cmdline:
                return proc.parent(), [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return None


def _preempt_after_checkpoint(results: Path, events: dict, deadline_s: float = 900) -> None:
    """Wait for the model's ``last.ckpt``; then freeze its notebook (so that the record cannot
    be written meanwhile), note whether the record exists, and preempt the job as SLURM does
    (``SlurmJob._interrupt``): SIGTERM to every process of the job, which ends the notebook,
    then USR2, which submitit's handler answers by calling ``ModelJob.checkpoint``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = list((results / "runs").glob(f"{PREEMPTED}-*/{CHECKPOINT_FILE}"))
        procs = _descendants_running(found[0].parent.parent) if found else None
        if procs is None:
            time.sleep(0.02)
            continue
        task, notebook = procs
        for proc in notebook:
            proc.send_signal(signal.SIGSTOP)
        run_dir = found[0].parent.parent
        events.update(record_before=(run_dir / METRICS_FILE).exists(), run_dir=run_dir,
                      notebook_pids=[p.pid for p in notebook])
        task.send_signal(signal.SIGTERM)
        for proc in notebook:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
        psutil.wait_procs(notebook, timeout=60)  # papermill dies; the kernel follows its parent
        time.sleep(1)  # the job now waits to be requeued rather than report a failure
        task.send_signal(signal.SIGUSR2)
        return


@pytest.mark.slow
def test_local_cluster_runs_preempts_requeues_and_reports(tiny_mini: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    profile = Profile(
        name="cluster", description="two tiny models as submitit jobs",
        models={PREEMPTED: {"fps_images": 100}, OTHER: {}}, params=TINY, recipe="quick")
    launcher = ClusterLauncher(SlurmOptions(time_min=30, gpus_per_job=0), cluster="local",
                               poll_s=0.5)
    events: dict = {}
    watcher = threading.Thread(target=_preempt_after_checkpoint, args=(results, events), daemon=True)
    watcher.start()
    lines: list[str] = []
    outcome = run_suite(profile, data_root=tiny_mini, results_dir=results, readme=None,
                        log=lines.append, launcher=launcher)
    watcher.join(timeout=5)
    text = "\n".join(lines)
    assert outcome.exit_code == 0, text
    assert "pre-flight passed." in text and "checked by each job on its node" in text

    # The preemption hit after the checkpoint, before the record; the notebook ended.
    assert events.get("record_before") is False, events
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in events["notebook_pids"])
    # submitit requeued the job, which resumed in the same folder from its last.ckpt.
    logs = "".join(p.read_text() for p in (results / "submitit").rglob("*_log.*"))
    assert "Bypassing signal SIGTERM" in logs and "this job is preempted" in logs
    assert "Requeued job" in logs
    run_dir = events["run_dir"]
    notebook = nbformat.read(run_dir / NOTEBOOK_FILE, as_version=4)
    outputs = json.dumps([c.get("outputs", []) for c in notebook.cells])
    assert f"resumed_from=PosixPath('{run_dir / CHECKPOINT_FILE}')" in outputs

    # Both records in the one results folder, one folder per model, and the report over both.
    records, problems = load_records(results)
    assert problems == [] and sorted(r["model"] for r in records) == sorted([PREEMPTED, OTHER])
    assert sorted(p.name for p in (results / "runs").iterdir()) == sorted(
        r["run_name"] for r in records)
    assert {j.status for j in outcome.jobs} == {"done"}
    table = (results / "benchmark.md").read_text()
    assert "LRASPP" in table and "UNet" in table
    assert "[2/2]" in text and "2 done, 0 skipped, 0 failed" in text
