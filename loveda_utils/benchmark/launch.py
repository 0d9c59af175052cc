"""The suite on a cluster: one submitit job per model, a SLURM job array (``run-suite --launcher
slurm``).

The submitting process (a login node) runs the pre-flight, claims the run folders, submits one
:class:`ModelJob` per model with ``executor.submit_array`` (one ``sbatch --array``), then waits
for all of them and builds the report itself (:func:`loveda_utils.benchmark.suite.run_suite`).
Waiting in the submitting process, rather than in a dependent ``--dependency=afterany`` job,
keeps one code path for every launcher and needs no GPU allocation for the report; run it in
``tmux``/``screen`` (or ``nohup``). If it stops anyway, the jobs go on, and
``python -m loveda_utils report --results-dir DIR`` builds the table from their records.

Each job runs the model's notebook exactly as the local suite does
(:func:`~loveda_utils.benchmark.suite.execute_job`: papermill, ``03_benchmark.ipynb``), in the run
folder the submitting process claimed (``loveda_utils/results/store.py``): the notebook takes
that claim over with its token while the submitting process holds it, and claims the folder
itself (resuming it) if the submitting process has gone. Before that, the job checks its
node's GPU (:func:`~loveda_utils.benchmark.preflight.check_devices`). On a time limit or a
preemption
SLURM sends ``USR2`` (``--signal=USR2@90``, submitit's default); :meth:`ModelJob.checkpoint`
stops the notebook and hands submitit the same job to requeue (``scontrol requeue``), at most
``max_requeues`` times after time limits (preemptions do not count). The requeued job resumes
in the same folder: the notebook resumes an unfinished folder and training continues from its
``checkpoints/last.ckpt`` (written at least every 1,000 steps, and on SIGTERM at a step boundary:
``training/recipe.py``'s ``checkpoint_interval``, ``training/callbacks.py``). The records land
in the one results folder, as every job writes ``runs/<run_name>/metrics.json`` below it.

The paths (repository, virtualenv, data, results) must be on a file system the nodes share,
with file locks (the run folders' claims): each job runs the submitting process's Python on
the node.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from submitit import AutoExecutor
from submitit.helpers import Checkpointable, DelayedSubmission, as_completed

from ..errors import ConfigError
from ..results.store import CLAIM_ENV, held_claim
from .devices import cuda_devices
from .preflight import check_devices
from .suite import Job, execute_job

#: submitit's folder below the results folder: submission scripts, pickles and logs per job.
SUBMITIT_DIR = "submitit"
#: Seconds the notebook's kernel, then papermill, get to exit after a SIGTERM before they are
#: killed: a training step and the ``last.ckpt`` written on SIGTERM fit in it, and both rounds
#: within the 90 s between SLURM's USR2 and the end of the job.
STOP_GRACE_S = 30.0
#: Seconds a job whose notebook a SIGTERM ended waits to be requeued: a preemption is SIGTERM,
#: then SLURM's requeue (``PreemptMode=REQUEUE``, after its ``GraceTime``) or submitit's USR2.
PREEMPTED_WAIT_S = 600.0


@dataclass(frozen=True)
class SlurmOptions:
    """What each model's SLURM job asks for (``run-suite --launcher slurm`` flags).

    Attributes:
        partition, account, qos, constraint: ``sbatch --partition/--account/--qos/--constraint``.
        time_min: the job's time limit in minutes (``--time``); a run that needs longer is
            requeued and resumes from its ``last.ckpt``.
        gpus_per_job: GPUs per job (``--gpus-per-node``); the notebook trains on ``devices``
            of them (default 1).
        cpus_per_job: CPUs per job (``--cpus-per-task``), which the data loaders use.
        mem_gb: host memory per job (``--mem``).
        max_parallel: jobs of the array running at once (``--array=0-N%max_parallel``).
        max_requeues: requeues after time limits before a job gives up.
        setup: shell lines run before the job (``module load ...``).
        sbatch: further ``#SBATCH --key=value`` lines (submitit's ``additional_parameters``).
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 24 * 60
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    max_parallel: int | None = None
    max_requeues: int = 3
    setup: tuple[str, ...] = ()
    sbatch: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for flag, value, least in (("--time", self.time_min, 1), ("--gpus-per-job", self.gpus_per_job, 0),
                                   ("--cpus-per-job", self.cpus_per_job, 1),
                                   ("--max-parallel", self.max_parallel, 1),
                                   ("--max-requeues", self.max_requeues, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < least):
                raise ConfigError(f"{flag} {value!r}: use an integer >= {least}")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ConfigError(f"--mem-gb {self.mem_gb!r}: use a positive number of GB")


def build_executor(folder: Path, options: SlurmOptions, cluster: str = "slurm") -> AutoExecutor:
    """A submitit ``AutoExecutor`` for ``cluster`` configured by ``options``.

    ``cluster="local"`` is submitit's ``LocalExecutor`` (each job a local process, with the
    same signals and requeueing), for trying the launcher on one machine; the SLURM-only
    options are then ignored.
    """
    try:
        executor = AutoExecutor(folder=folder, cluster=cluster,
                                slurm_max_num_timeout=options.max_requeues,
                                local_max_num_timeout=options.max_requeues)
    except RuntimeError as exc:  # SlurmExecutor: no srun on PATH
        raise ConfigError(f"--launcher {cluster}: {exc}; submit from a SLURM login node "
                          "(where srun and sbatch are on PATH)") from None
    executor.update_parameters(
        name="loveda-suite",
        timeout_min=options.time_min,
        gpus_per_node=options.gpus_per_job,
        cpus_per_task=options.cpus_per_job,
        mem_gb=options.mem_gb,
        slurm_partition=options.partition,
        slurm_account=options.account,
        slurm_qos=options.qos,
        slurm_constraint=options.constraint,
        slurm_array_parallelism=options.max_parallel,
        slurm_setup=list(options.setup) or None,
        slurm_additional_parameters=dict(options.sbatch) or None,
    )
    return executor


def _stop_children(grace_s: float = STOP_GRACE_S) -> None:
    """Stop the notebook this job started, so that a requeued job never shares its run folder
    with the notebook it replaces: SIGTERM to the kernel first (the processes without children),
    whose training then stops at a step boundary and writes ``last.ckpt``
    (``training/callbacks.py``) and papermill ends the run itself; then SIGTERM to whatever
    is left; then SIGKILL."""
    procs = psutil.Process().children(recursive=True)  # listed before the parents exit
    leaves = [p for p in procs if not _has_children(p)]
    for targets in (leaves, procs):
        for proc in targets:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM once continued
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        if not alive:
            return
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def _has_children(proc: psutil.Process) -> bool:
    try:
        return bool(proc.children())
    except psutil.NoSuchProcess:
        return False


class ModelJob(Checkpointable):
    """One model's run as a submitit job: check the node's GPU, then run the notebook.

    On a time limit or a preemption submitit calls :meth:`checkpoint`, which returns the same
    call to requeue (submitit pickles it); it resumes in the run folder.
    """

    def __init__(self, job: Job, allow_cpu: bool = False, allow_memory: bool = False,
                 claim_token: str | None = None) -> None:
        self.job = job
        self.allow_cpu = allow_cpu
        self.allow_memory = allow_memory
        self.claim_token = claim_token

    def __call__(self) -> Job:
        job = self.job
        refused = [f for f in check_devices([job], cuda_devices(), allow_cpu=self.allow_cpu,
                                            allow_memory=self.allow_memory) if f.refused]
        if refused:
            job.status = "failed"
            job.message = f"pre-flight on {socket.gethostname()}: " + "; ".join(
                f"{f.detail} ({f.fix})" for f in refused)
            return job
        if self.claim_token:  # the notebook takes over the submitting process's claim
            os.environ[CLAIM_ENV] = self.claim_token
        # A SIGTERM (SLURM's preemption, sent to every process of the job) ends the notebook;
        # submitit ignores it in this process, which then must not report the run as failed
        # but wait for the requeue (SIGKILL by SLURM, or USR2 into checkpoint()).
        terminated = threading.Event()
        previous = signal.getsignal(signal.SIGTERM)

        def note_sigterm(signum: int, frame: Any) -> None:
            terminated.set()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, note_sigterm)
        try:
            execute_job(job, None)  # the GPUs are the ones SLURM gave the job
            if terminated.is_set() and job.status != "done":
                time.sleep(PREEMPTED_WAIT_S)
                job.message = (f"SIGTERM, and no requeue within {PREEMPTED_WAIT_S:.0f} s: "
                               f"{job.message}")
        finally:
            signal.signal(signal.SIGTERM, previous)
        return job

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Stop the notebook and requeue this same job (submitit calls it on ``USR2``)."""
        _stop_children()
        self.job.status, self.job.message, self.job.seconds = "pending", "", None
        return DelayedSubmission(self, *args, **kwargs)


@dataclass
class ClusterLauncher:
    """Runs the suite's models as submitit jobs (``run_suite(launcher=...)``).

    ``cluster``: ``"slurm"``, or ``"local"`` for submitit's local executor (tests, trying it
    out). ``poll_s``: seconds between looks at the jobs' states while waiting.
    """

    options: SlurmOptions = field(default_factory=SlurmOptions)
    cluster: str = "slurm"
    poll_s: float = 60.0

    def executor(self, results_dir: Path) -> AutoExecutor:
        """The executor, its logs in ``<results_dir>/submitit/<job id>/``; fails at once when
        the cluster is not reachable from here."""
        return build_executor(Path(results_dir) / SUBMITIT_DIR / "%j", self.options, self.cluster)

    def submit(self, executor: AutoExecutor, jobs: Sequence[Job], *, allow_cpu: bool = False,
               allow_memory: bool = False) -> list:
        """One job per model, as one array; returns submitit's jobs in the order of ``jobs``."""
        calls = []
        for job in jobs:
            claim = held_claim(job.run_dir) if job.run_dir is not None else None
            calls.append(ModelJob(job, allow_cpu, allow_memory, claim.token if claim else None))
        return executor.submit_array(calls)

    def run(self, executor: AutoExecutor, jobs: Sequence[Job], results_dir: Path, *,
            allow_cpu: bool = False, allow_memory: bool = False,
            log: Callable[[str], None] = print) -> None:
        """Submit ``jobs``, then wait for every one, filling in each ``Job``'s outcome."""
        if not jobs:
            return
        submitted = self.submit(executor, jobs, allow_cpu=allow_cpu, allow_memory=allow_memory)
        for job, sub in zip(jobs, submitted):
            log(f"  {job.model}: {self.cluster} job {sub.job_id} -> {job.run_dir}")
        log(f"waiting for {len(submitted)} job(s); their logs: {submitted[0].paths.folder.parent}. "
            "If this process stops, the jobs go on: build the table afterwards with `python -m "
            f"loveda_utils report --results-dir {results_dir}`")
        order = {id(sub): i for i, sub in enumerate(submitted)}
        for count, sub in enumerate(as_completed(submitted, poll_frequency=self.poll_s), 1):
            job = jobs[order[id(sub)]]
            try:
                done: Job = sub.result()
                job.status, job.seconds, job.message = done.status, done.seconds, done.message
            except Exception as exc:  # the job died outside the notebook (node, SLURM, submitit)
                job.status = "failed"
                job.message = (f"{self.cluster} job {sub.job_id}: {type(exc).__name__}; see "
                               f"{sub.paths.stderr}")
            took = f"{job.seconds:.0f}s" if job.seconds is not None else "?"
            log(f"[{count}/{len(jobs)}] {job.model}: {job.status.upper()} in {took}: {job.message}")
