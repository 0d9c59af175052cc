"""Run folders: names, where they may be, claiming them, reading records, completed runs.

The claims between processes (live owners, dead owners, races) are tested with real processes
in tests/benchmark/test_run_folders.py; here, one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from record_factory import FCN, PSPNET, make_record, write_run

from loveda_utils.errors import ConfigError
from loveda_utils.results.store import (
    LOCK_FILE,
    MAX_NAME_LENGTH,
    check_output_folder,
    check_run_name,
    claim_folder,
    claim_run_dir,
    completed_runs,
    held_claim,
    load_records,
    release_run_dir,
    run_group_for,
)

ROOT_SKIP = "runs as root, whom file modes do not stop; the same path is tested with os.access mocked"


def test_run_group_for() -> None:
    assert run_group_for("fcn_resnet50", True, 256, 200) == "fcn_resnet50-mini-256px-200it"
    assert run_group_for("fcn_resnet50", False, 512, 80000) == "fcn_resnet50-loveda-512px-80000it"


def test_claim_run_dir_never_reuses_a_folder_with_a_record(tmp_path: Path) -> None:
    first = claim_run_dir(tmp_path, "grp")
    assert first == tmp_path / "runs" / "grp" and first.is_absolute()
    (first / "metrics.json").write_text("keep", encoding="utf-8")
    second = claim_run_dir(tmp_path, "grp")
    assert second.name == "grp-r2"
    # A folder this process holds is another run's (unless resuming): the next number.
    assert claim_run_dir(tmp_path, "grp", "mine").name == "mine"
    assert claim_run_dir(tmp_path, "grp", "mine").name == "mine-r2"
    assert claim_run_dir(tmp_path, "grp", "grp").name == "grp-r3"
    assert (first / "metrics.json").read_text(encoding="utf-8") == "keep"
    # Parents are created.
    assert claim_run_dir(tmp_path / "a" / "b", "grp").is_dir()


@pytest.mark.parametrize(
    "name",
    ["..", "../..", "../escape", "a/../../b", "/tmp/elsewhere", "a/b", "a\\b", "", " ", ".hidden",
     "-rf", "x\n", "x y", "x" * (MAX_NAME_LENGTH + 1)],
)
def test_a_name_that_is_not_a_plain_folder_name_is_refused_before_any_folder(tmp_path: Path, name: str) -> None:
    results = tmp_path / "results"
    with pytest.raises(ConfigError, match=r"run_name=.* is not a plain folder name"):
        claim_run_dir(results, "grp", name)
    with pytest.raises(ConfigError, match=r"run_group=.* is not a plain folder name"):
        claim_run_dir(results, name)
    assert not results.exists()


def test_plain_names_pass() -> None:
    for name in ("a", "unet_resnet18-mini-128px-150it", "x.y+z=1", "A" * MAX_NAME_LENGTH):
        assert check_run_name(name) == name


def test_a_run_folder_that_is_a_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    """runs/x pointing elsewhere would put the run outside the results folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    (runs / "x").symlink_to(elsewhere)
    for resume in (False, True):
        with pytest.raises(ConfigError, match=r"runs/x is a symbolic link .*elsewhere"):
            claim_run_dir(tmp_path / "results", "grp", "x", resume=resume)
        with pytest.raises(ConfigError, match="symbolic link"):
            claim_run_dir(tmp_path / "results", "x", resume=resume)
    # A numbered attempt that is a link (dangling, here) is refused when reached.
    (runs / "y").mkdir()
    (runs / "y" / "metrics.json").write_text("{}", encoding="utf-8")
    (runs / "y-r2").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"runs/y-r2 is a symbolic link"):
        claim_run_dir(tmp_path / "results", "y")
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "nowhere").exists()


def test_a_lock_file_that_is_a_symlink_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious", encoding="utf-8")
    folder = tmp_path / "results" / "runs" / "x"
    folder.mkdir(parents=True)
    (folder / LOCK_FILE).symlink_to(victim)
    with pytest.raises(ConfigError, match="cannot use .*runs/x as a run folder"):
        claim_run_dir(tmp_path / "results", "grp", "x", resume=True)
    assert victim.read_text(encoding="utf-8") == "precious"


def test_a_run_folder_that_is_a_file_is_refused(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "x").write_text("not a folder", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"runs/x is a file"):
        claim_run_dir(tmp_path, "grp", "x")


@pytest.mark.parametrize("layout", ["results_dir is a file", "under a file", "runs is a file"])
def test_a_results_dir_that_is_a_file_is_refused(tmp_path: Path, layout: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    results = {"results_dir is a file": afile, "under a file": afile / "results"}.get(layout, tmp_path)
    if layout == "runs is a file":
        (tmp_path / "runs").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"results_dir=.* is a file"):
        claim_run_dir(results, "grp")
    assert afile.read_text(encoding="utf-8") == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason=ROOT_SKIP)
def test_a_read_only_results_dir_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match=r"results_dir=.* is not writable"):
            claim_run_dir(tmp_path / "results", "grp")
        with pytest.raises(ConfigError, match=r"--run-dir=.* is not writable"):
            claim_folder(tmp_path / "run")
    finally:
        tmp_path.chmod(0o755)
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_results_dir_is_refused_as_os_access_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != tmp_path and real_access(path, mode, **kw))
    with pytest.raises(ConfigError, match=rf"results_dir=.*: {tmp_path} is not writable; pass a folder you can"):
        claim_run_dir(tmp_path / "results", "grp")
    with pytest.raises(ConfigError, match=r"--run-dir=.* is not writable"):
        claim_folder(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_a_write_refused_by_the_file_system_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What root meets on a read-only mount, where os.access still says yes: mkdir raises."""
    (tmp_path / "runs").mkdir()

    real_mkdir = Path.mkdir

    def refuse(self: Path, *args, **kwargs) -> None:
        if self.name == "grp":
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ConfigError, match=r"run_group='grp': cannot create .*runs/grp \(Permission denied\)"):
        claim_run_dir(tmp_path, "grp")
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_failed_lock_leaves_no_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(ConfigError, match=r"cannot lock .*\.run\.lock \(No locks available\)"):
        claim_run_dir(tmp_path, "grp")
    assert list((tmp_path / "runs").iterdir()) == []


def test_check_output_folder_resolves_against_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_output_folder("out/results", "results_dir") == tmp_path / "out" / "results"
    assert not (tmp_path / "out").exists()  # creates nothing
    with pytest.raises(ConfigError, match="results_dir is empty"):
        check_output_folder("", "results_dir")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    with pytest.raises(ConfigError, match="is a broken symbolic link"):
        check_output_folder("dangling/x", "results_dir")


def test_an_abandoned_empty_attempt_is_reused_not_left_behind(tmp_path: Path) -> None:
    """A claim whose run died before writing anything leaves a folder holding only the lock
    file; the next claim takes it instead of adding another -rN."""
    runs = tmp_path / "runs"
    for name in ("grp", "grp-r2", "grp-r3"):
        (runs / name).mkdir(parents=True)
    (runs / "grp" / "metrics.json").write_text("{}", encoding="utf-8")
    (runs / "grp-r2" / LOCK_FILE).write_text("", encoding="utf-8")  # died right after claiming
    (runs / "grp-r3" / "params.json").write_text("{}", encoding="utf-8")  # died mid-run
    # Not resuming: the empty r2 is reused, the r3 with files is not touched.
    assert claim_run_dir(tmp_path, "grp") == runs / "grp-r2"
    assert claim_run_dir(tmp_path, "grp") == runs / "grp-r4"
    assert sorted(p.name for p in (runs / "grp-r3").iterdir()) == [LOCK_FILE, "params.json"]
    assert (runs / "grp-r3" / "params.json").read_text(encoding="utf-8") == "{}"


def test_resume_takes_the_newest_unfinished_attempt(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert claim_run_dir(tmp_path, "grp", resume=True) == runs / "grp"  # nothing yet: fresh
    (runs / "grp" / "metrics.json").write_text("{}", encoding="utf-8")
    crashed = runs / "grp-r2"
    crashed.mkdir()
    (crashed / "params.json").write_text("{}", encoding="utf-8")
    assert claim_run_dir(tmp_path, "grp", resume=True) == crashed
    assert held_claim(crashed).resumed
    # This process holds it now: resuming again is the same run; a fresh claim is another run.
    assert claim_run_dir(tmp_path, "grp", resume=True) == crashed
    assert claim_run_dir(tmp_path, "grp") == runs / "grp-r3"
    release_run_dir(crashed)
    assert held_claim(crashed) is None
    # Attempts are ordered by number, not by name (r10 after r9); other groups sharing the
    # prefix and names that are not attempts do not count.
    for number in range(4, 11):
        (runs / f"grp-r{number}").mkdir()
        (runs / f"grp-r{number}" / "params.json").write_text("{}", encoding="utf-8")
    (runs / "grpx").mkdir()
    (runs / "grp-rx").mkdir()
    assert claim_run_dir(tmp_path, "grp", resume=True) == runs / "grp-r10"
    # Once the newest attempt holds a record, older unfinished ones are not resumed.
    (runs / "grp-r10" / "metrics.json").write_text("{}", encoding="utf-8")
    assert claim_run_dir(tmp_path, "grp", resume=True) == runs / "grp-r11"


def test_claim_folder_takes_the_users_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train --run-dir: any path of the user's (relative to the current directory, through
    links the user made), created when missing; never a file."""
    monkeypatch.chdir(tmp_path)
    assert claim_folder("runs/x") == tmp_path / "runs" / "x" and (tmp_path / "runs" / "x").is_dir()
    assert claim_folder("runs/x") == tmp_path / "runs" / "x"  # this process's own: the same run
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert claim_folder("link") == tmp_path / "link" and (tmp_path / "real" / LOCK_FILE).is_file()
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"--run-dir='afile': .*afile is a file"):
        claim_folder("afile")
    with pytest.raises(ConfigError, match=r"--run-dir='afile/x': .*afile is a file"):
        claim_folder("afile/x")


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
    # Named by their place in the results folder: no local absolute path in any message.
    assert any(p.startswith("runs/broken-json/metrics.json: not valid JSON") for p in problems)
    assert any(
        p.startswith(f"runs/{missing_dir.name}/metrics.json: ") and "per_class_iou" in p
        for p in problems
    )
    assert not any(str(tmp_path) in p for p in problems)
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
