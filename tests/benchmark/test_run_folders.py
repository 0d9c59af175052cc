"""Two runs never share a folder, no run leaves its folder: claims between real processes.

Each claimant is a separate Python process (:class:`Claimant`) taking commands on stdin, so a
lock is held by a live process, dies with it, and races are real races between processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from record_factory import make_record, write_run

from loveda_utils.benchmark.config import BenchmarkConfig
from loveda_utils.benchmark.run import BenchmarkRun
from loveda_utils.benchmark.suite import plan
from loveda_utils.cli import main as cli
from loveda_utils.errors import ConfigError
from loveda_utils.results.store import (
    LOCK_FILE,
    METRICS_FILE,
    claim_run_dir,
    held_claim,
    release_run_dir,
)

REPO = Path(__file__).resolve().parents[2]
MODEL = "lraspp_mobilenet_v3_large"

#: A claimant: one JSON command a line ({"do", "args", "kwargs", "at"}), one JSON reply a line.
#: "at" is a wall-clock time to wait for, so that several claimants act at the same moment.
CLAIMANT = r"""
import json, sys, time
from pathlib import Path
from loveda_utils.results import store
print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["do"] == "plan":
        from loveda_utils.benchmark.suite import plan
    while time.time() < cmd.get("at", 0):
        time.sleep(0.0002)
    try:
        args, kwargs = cmd.get("args", []), cmd.get("kwargs", {})
        if cmd["do"] == "claim":
            out = store.claim_run_dir(*args, **kwargs)
        elif cmd["do"] == "claim_folder":
            out = store.claim_folder(*args)
        elif cmd["do"] == "plan":
            out = plan(args[0], args[1].split(","), *args[2:])[0].run_dir
        elif cmd["do"] == "finish":
            Path(args[0], "metrics.json").write_text("{}")
            store.release_run_dir(args[0])
            out = args[0]
        elif cmd["do"] == "release":
            store.release_run_dir(args[0])
            out = args[0]
        print(json.dumps({"ok": str(out)}), flush=True)
    except Exception as err:
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
"""


class Claimant:
    """A Python process that claims folders when told to."""

    def __init__(self, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLAIMANT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, **(env or {})},
            pass_fds=pass_fds,
        )  # fmt: skip
        self.pid = self.proc.pid
        assert self._line() == "ready", self.proc.stderr.read()

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"claimant {self.pid} died: {self.proc.stderr.read()}")
        return line.strip()

    def send(self, do: str, *args, at: float = 0.0, **kwargs) -> None:
        command = {"do": do, "args": [str(a) for a in args], "kwargs": kwargs, "at": at}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, str]:
        return json.loads(self._line())

    def call(self, do: str, *args, **kwargs) -> dict[str, str]:
        self.send(do, *args, **kwargs)
        return self.reply()

    def kill(self) -> None:
        """SIGKILL: no clean-up runs; the kernel drops the process's locks."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def claimants():
    started: list[Claimant] = []

    def start(**kwargs) -> Claimant:
        started.append(Claimant(**kwargs))
        return started[-1]

    yield start
    for claimant in started:
        claimant.close()


def _soon() -> float:
    return time.time() + 0.5


# -- a live owner, a dead owner --------------------------------------------------------------------


def test_a_live_claim_is_refused_for_its_run_name_and_passed_over_otherwise(tmp_path: Path, claimants) -> None:
    holder = claimants()
    folder = Path(holder.call("claim", tmp_path, "grp", "mine", resume=True)["ok"])
    assert folder == tmp_path / "runs" / "mine"
    # The notebook with that run_name is refused, naming the owner.
    with pytest.raises(ConfigError, match=rf"run_name='mine': .*runs/mine is in use by a live run "
                                          rf"\(pid {holder.pid} on "):
        claim_run_dir(tmp_path, "grp", "mine", resume=True)
    # The owner dies without any clean-up: its folder (no record) is resumed, not skipped.
    holder.kill()
    assert claim_run_dir(tmp_path, "grp", "mine", resume=True) == folder
    release_run_dir(folder)
    # A claim without a run_name (the suite, a notebook without one) takes the next folder.
    holder = claimants()
    assert holder.call("claim", tmp_path, "grp")["ok"] == str(tmp_path / "runs" / "grp")
    for resume in (True, False):
        other = claim_run_dir(tmp_path, "grp", resume=resume)
        assert other == tmp_path / "runs" / "grp-r2"
        release_run_dir(other)


def test_a_finished_folder_is_never_claimed_even_while_its_owner_lives(tmp_path: Path, claimants) -> None:
    """A notebook kernel that wrote its record may stay open for hours: a new run of that
    name takes the next folder instead of being refused."""
    holder = claimants()
    folder = Path(holder.call("claim", tmp_path, "grp", "mine", resume=True)["ok"])
    (folder / METRICS_FILE).write_text("{}", encoding="utf-8")
    again = claim_run_dir(tmp_path, "grp", "mine", resume=True)
    assert again.name == "mine-r2"
    release_run_dir(again)


def test_many_concurrent_claims_never_share_a_folder_nor_leave_one_empty(tmp_path: Path, claimants) -> None:
    """Four processes claim the same group at the same moment, round after round; some finish
    (a record), some die having written nothing (their empty folders must be reused)."""
    workers = [claimants() for _ in range(4)]
    finished: set[str] = set()
    for round_ in range(8):
        at = _soon()
        for worker in workers:
            worker.send("claim", tmp_path, "grp", at=at, resume=round_ % 2 == 1)
        replies = [worker.reply() for worker in workers]
        assert all("ok" in r for r in replies), replies
        folders = [Path(r["ok"]) for r in replies]
        assert len(set(folders)) == len(workers), f"round {round_}: shared {folders}"
        for index, (worker, folder) in enumerate(zip(workers, folders, strict=True)):
            abandon = (round_ + index) % 3 == 0 and round_ < 7  # the last round finishes all
            assert "ok" in worker.call("release" if abandon else "finish", folder)
            if not abandon:
                finished.add(folder.name)
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    # Every folder holds a record: the empty ones left by the abandoned claims were reused.
    assert all((tmp_path / "runs" / name / METRICS_FILE).is_file() for name in names), names
    assert set(names) == finished
    assert sorted(names) == sorted(["grp"] + [f"grp-r{n}" for n in range(2, len(names) + 1)])


def test_one_resumable_folder_goes_to_exactly_one_of_many_claimants(tmp_path: Path, claimants) -> None:
    workers = [claimants() for _ in range(4)]
    for attempt in range(3):
        results = tmp_path / f"try{attempt}"
        (results / "runs" / "grp").mkdir(parents=True)
        (results / "runs" / "grp" / METRICS_FILE).write_text("{}", encoding="utf-8")
        crashed = results / "runs" / "grp-r2"
        crashed.mkdir()
        (crashed / "params.json").write_text("{}", encoding="utf-8")
        at = _soon()
        for worker in workers:
            worker.send("claim", results, "grp", at=at, resume=True)
        folders = sorted(Path(w.reply()["ok"]).name for w in workers)
        assert folders == ["grp-r2", "grp-r3", "grp-r4", "grp-r5"]


def test_two_suites_never_plan_one_model_into_one_folder(mini_loveda: Path, tmp_path: Path, claimants) -> None:
    suites = [claimants(), claimants()]
    at = _soon() + 2  # after both have imported the suite
    for suite in suites:
        suite.send("plan", "quick", MODEL, mini_loveda, tmp_path, at=at)
    replies = [s.reply() for s in suites]
    folders = {Path(r["ok"]) for r in replies}
    first, second = sorted(f.name for f in folders)
    assert second == first + "-r2", replies
    # A third suite while both hold their folders: a third folder; after they die, it resumes.
    (job,) = plan("quick", [MODEL], mini_loveda, tmp_path)
    assert job.run_dir not in folders and job.run_dir.name.endswith("-r3")
    job.release()
    for suite in suites:
        suite.kill()
    (job,) = plan("quick", [MODEL], mini_loveda, tmp_path)
    assert job.run_dir.name.endswith("-r3")  # the newest attempt, abandoned and empty
    job.release()


# -- the suite's notebook takes over the suite's claim -----------------------------------------------


def test_a_child_started_with_the_claim_takes_it_over(tmp_path: Path, claimants) -> None:
    folder = claim_run_dir(tmp_path, "grp")
    claim = held_claim(folder)
    # Without the claim's token, the child (the notebook) is refused: the suite holds it.
    stranger = claimants()
    assert f"in use by a live run (pid {os.getpid()} on " in stranger.call(
        "claim", tmp_path, "grp", folder.name, resume=True)["error"]
    # With it (the suite's environment for papermill), the child runs in the folder.
    child = claimants(env=claim.child_env(), pass_fds=claim.pass_fds())
    assert child.call("claim", tmp_path, "grp", folder.name, resume=True) == {"ok": str(folder)}
    # The child holds the inherited lock too: the folder stays claimed when the parent lets go
    # (or is killed) while the child still runs, and is free once the child ends.
    release_run_dir(folder)
    assert "in use by a live run" in stranger.call("claim", tmp_path, "grp", folder.name, resume=True)["error"]
    child.close()
    assert stranger.call("claim", tmp_path, "grp", folder.name, resume=True) == {"ok": str(folder)}


def test_the_notebook_refuses_a_run_name_a_live_run_holds(mini_loveda: Path, tmp_path: Path, claimants) -> None:
    holder = claimants()
    folder = Path(holder.call("claim", tmp_path, "grp", "mine")["ok"])
    config = BenchmarkConfig.from_params(dict(model=MODEL, data_root=str(mini_loveda), results_dir=str(tmp_path),
                             run_name="mine", recipe="quick", crop_size=64, num_workers=0, progress=False))
    with pytest.raises(ConfigError, match=rf"in use by a live run \(pid {holder.pid} "):
        BenchmarkRun(config).prepare()
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]  # nothing written into it
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["mine"]


def test_train_refuses_a_run_dir_a_live_run_holds(tmp_path: Path, claimants, capsys) -> None:
    holder = claimants()
    assert "ok" in holder.call("claim_folder", tmp_path / "run")
    code = cli(["train", "--model", MODEL, "--run-dir", str(tmp_path / "run"), "--pretrained", "none"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"--run-dir='{tmp_path / 'run'}' is in use by a live run (pid {holder.pid} " in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_FILE]


# -- names and paths in the notebook and the suite ---------------------------------------------------


@pytest.mark.parametrize("name", ["..", "../x", "/abs", "a/b", "", "x\n"])
def test_the_notebook_refuses_a_bad_run_name_when_the_config_is_built(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="run_name=.* is not a plain folder name"):
        BenchmarkConfig(model=MODEL, results_dir=str(tmp_path / "results"), run_name=name)
    assert list(tmp_path.iterdir()) == []


def test_the_notebook_never_follows_a_symlinked_run_folder(mini_loveda: Path, tmp_path: Path) -> None:
    """Before: an unfinished-looking runs/x (a link to elsewhere) was "resumed" through the link."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "results" / "runs").mkdir(parents=True)
    (tmp_path / "results" / "runs" / "x").symlink_to(elsewhere)
    config = BenchmarkConfig.from_params(dict(model=MODEL, data_root=str(mini_loveda), results_dir=str(tmp_path / "results"),
                             run_name="x", recipe="quick", crop_size=64, num_workers=0, progress=False))
    with pytest.raises(ConfigError, match="is a symbolic link"):
        BenchmarkRun(config).prepare()
    assert list(elsewhere.iterdir()) == []


def test_a_relative_results_dir_is_the_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = BenchmarkConfig(model=MODEL, results_dir="out/results")
    assert config.results_dir == str(tmp_path / "out" / "results")
    assert BenchmarkConfig(model=MODEL).results_dir is None  # the project's results/


def test_the_suite_hands_the_notebook_absolute_paths(mini_loveda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs the notebook in notebooks/: a relative path given to it would name
    another place there. Every path parameter goes absolute, against the caller's directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mini").symlink_to(mini_loveda)
    (job,) = plan("quick", [MODEL], Path("mini"), Path("res"),
                  overrides={"checkpoint": "ckpts/last.ckpt", "pretrained": "weights/w.pth"})
    assert job.params["results_dir"] == str(tmp_path / "res")
    assert job.params["data_root"] == str(tmp_path / "mini")
    assert job.params["checkpoint"] == str(tmp_path / "ckpts" / "last.ckpt")
    assert job.params["pretrained"] == str(tmp_path / "weights" / "w.pth")
    assert job.run_dir.parent == tmp_path / "res" / "runs"
    job.release()
    (job,) = plan("quick", [MODEL], Path("mini"), Path("res"), overrides={"pretrained": "imagenet"})
    assert job.params["pretrained"] == "imagenet"  # a keyword, not a path
    job.release()


@pytest.mark.slow
def test_papermill_from_a_shell_resolves_results_dir_against_its_directory(mini_loveda: Path, tmp_path: Path) -> None:
    """``papermill`` without ``--cwd`` runs the kernel in the caller's directory, and the
    notebook makes ``results_dir`` absolute there (the run is stopped early by a missing
    pretrained file: the folder is claimed and its parameters written before training)."""
    cmd = [sys.executable, "-m", "papermill", str(REPO / "notebooks" / "03_benchmark.ipynb"), "out.ipynb",
           "-p", "model", MODEL, "-p", "data_root", str(mini_loveda), "-p", "results_dir", "rel",
           "-p", "recipe", "quick", "-p", "crop_size", "64", "-p", "pretrained", "missing/weights.pth", "-p", "num_workers", "0",
           "-p", "progress", "False", "-k", "python3", "--no-progress-bar"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "missing/weights.pth" in done.stderr + done.stdout
    (params,) = (tmp_path / "rel" / "runs").glob("*/params.json")
    assert json.loads(params.read_text())["results_dir"] == str(tmp_path / "rel")
    assert not (REPO / "notebooks" / "rel").exists()


def test_plan_checks_every_value_before_claiming_a_folder(mini_loveda: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--set foo: not a parameter of notebooks/03_benchmark.ipynb; "
                                          r"use one of .*max_steps"):
        plan("quick", [MODEL], mini_loveda, tmp_path, overrides={"foo": 1})
    with pytest.raises(ConfigError, match=r"--set run_name: the suite names each model's folder"):
        plan("quick", [MODEL], mini_loveda, tmp_path, overrides={"run_name": "x"})
    with pytest.raises(ConfigError, match=r"eval_split: split='foo'"):
        plan("quick", [MODEL, "unet_resnet18"], mini_loveda, tmp_path, overrides={"eval_split": "foo"})
    assert list(tmp_path.iterdir()) == []


def test_run_suite_no_readme_leaves_the_readme_alone(mini_loveda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The results are the repository's own (so the README would get the table) and every model
    is done already, so no notebook runs; the comparison's rendering is not the subject."""
    from loveda_utils import paths
    from loveda_utils.benchmark import suite
    from loveda_utils.results.report import README_END, README_START

    results = tmp_path / "results"
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(paths, "RESULTS_DIR", results)
    monkeypatch.setattr(suite, "render_comparison", lambda *args, **kwargs: {})
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{README_START}\nold\n{README_END}\n", encoding="utf-8")
    (job,) = plan("quick", [MODEL], mini_loveda, results)
    job.release()
    write_run(results, make_record((MODEL, "LRASPP", "MobileNetV3-L"), synthetic=True,
                                   crop_size=job.params["crop_size"], lr_schd=job.params["max_steps"]))
    argv = ["run-suite", "--models", MODEL, "--data-root", str(mini_loveda), "--results-dir", str(results)]
    before = readme.read_bytes()
    assert cli([*argv, "--no-readme"]) == 0
    assert readme.read_bytes() == before and (results / "benchmark.md").is_file()
    assert cli(argv) == 0
    assert "LRASPP" in readme.read_text(encoding="utf-8")  # without the flag it is rewritten


def test_a_finished_predictions_only_run_is_reported_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Test-split run's record has no scores (mIoU null): the suite's line for it says so
    instead of failing on ``100 * None`` after the notebook succeeded."""
    from record_factory import make_record

    from loveda_utils.benchmark import suite
    from loveda_utils.files import write_json_atomic
    from loveda_utils.results.store import claim_run_dir

    record = make_record()
    record.update(miou=None, fps=None)  # as the Test split leaves it
    run_dir = claim_run_dir(tmp_path / "results", "m-loveda-128px-10it-test")

    def notebook_writes_its_record(cmd, *args, **kwargs):
        write_json_atomic(run_dir / "metrics.json", record)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(suite.subprocess, "run", notebook_writes_its_record)
    job = suite.execute_job(suite.Job("m", {"model": "m"}, "m-loveda", run_dir=run_dir), None)
    assert (job.status, job.message) == ("done", "no scores (predictions only)")
    record.update(miou=0.5099, fps=12.34)
    assert suite.execute_job(job, None).message == "mIoU 50.99, 12.3 fps"
