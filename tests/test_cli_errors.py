"""Bad arguments to the commands: one line on stderr naming the argument and the fix, exit code
2, no traceback, and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from record_factory import make_record, write_run

from loveda_utils.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
MODEL = "lraspp_mobilenet_v3_large"
ROOT_SKIP = "runs as root, whom file modes do not stop; the same path is tested with os.access mocked"


def _one_line_error(capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture
def afile(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a folder", encoding="utf-8")
    return path


@pytest.fixture
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder this process may not write in, as ``os.access`` tells it (root writes through
    file modes, so the mode is not what the code can rely on: it asks os.access, mocked here)."""
    folder = tmp_path / "read-only"
    write_run(folder, make_record())  # report has records to make a table of
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != folder and real_access(path, mode, **kw))
    return folder


# -- folders that are files, folders that are read-only ----------------------------------------------


@pytest.mark.parametrize("under", [False, True])
def test_train_run_dir_that_is_a_file(afile: Path, capsys, under: bool) -> None:
    run_dir = afile / "run" if under else afile
    assert cli(["train", "--model", MODEL, "--run-dir", str(run_dir), "--pretrained", "none"]) == 2
    _one_line_error(capsys, f"--run-dir='{run_dir}': {afile} is a file, not a folder")
    assert afile.read_text(encoding="utf-8") == "not a folder"


@pytest.mark.parametrize("command", ["run-suite", "report"])
def test_results_dir_that_is_a_file(afile: Path, capsys, command: str) -> None:
    assert cli([command, "--results-dir", str(afile)]) == 2
    _one_line_error(capsys, f"'{afile}': {afile} is a file, not a folder; pass a folder path")


def test_results_dir_that_is_a_file_as_a_process(afile: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "loveda_utils", "run-suite", "--results-dir", str(afile)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"{afile} is a file" in done.stderr


def test_a_missing_results_dir_for_report(tmp_path: Path, capsys) -> None:
    assert cli(["report", "--results-dir", str(tmp_path / "missing"), "--no-readme"]) == 2
    _one_line_error(capsys, "does not exist", "run-suite")


@pytest.mark.parametrize(
    "argv",
    [
        ["run-suite", "--results-dir", "{dir}/results"],
        ["report", "--results-dir", "{dir}", "--no-readme"],
        ["train", "--model", MODEL, "--run-dir", "{dir}/run", "--pretrained", "none"],
    ],
)
def test_a_read_only_folder(read_only: Path, capsys, argv: list[str]) -> None:
    before = sorted(read_only.rglob("*"))
    assert cli([a.format(dir=read_only) for a in argv]) == 2
    _one_line_error(capsys, f"{read_only} is not writable; pass a folder you can write in")
    assert sorted(read_only.rglob("*")) == before


@pytest.mark.skipif(os.geteuid() == 0, reason=ROOT_SKIP)
def test_a_read_only_folder_by_its_mode(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert cli(["run-suite", "--results-dir", str(folder / "results")]) == 2
        _one_line_error(capsys, "is not writable")
        assert cli(["train", "--model", MODEL, "--run-dir", str(folder / "run"), "--pretrained", "none"]) == 2
        _one_line_error(capsys, "is not writable")
    finally:
        folder.chmod(0o755)


def test_a_write_the_file_system_refuses(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where os.access says yes but the write fails (root on a read-only mount, a full disk)."""
    from loveda_utils.results import report

    write_run(tmp_path, make_record())

    def refuse(path, data, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(report, "write_text_atomic", refuse)
    assert cli(["report", "--results-dir", str(tmp_path), "--no-readme"]) == 2
    _one_line_error(capsys, f"cannot write {tmp_path / 'benchmark.md'}: Permission denied")


# -- names and choices -------------------------------------------------------------------------------


def test_export_submission_split(tmp_path: Path, capsys) -> None:
    assert cli(["export-submission", str(tmp_path), "--split", "foo"]) == 2
    _one_line_error(capsys, "--split 'foo': use Train, Val, Test")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run-suite", "--profile", "x"], "argument --profile: invalid choice: 'x' (choose from 'quick', 'mmseg'"),
        (["estimate", "--profile", "x"], "invalid choice: 'x'"),
        (["fetch-weights", "--profile", "x"], "invalid choice: 'x'"),
        (["train", "--recipe", "x", "--run-dir", "r"], "argument --recipe: invalid choice: 'x'"),
        (["train", "--optimizer", "x", "--run-dir", "r"], "argument --optimizer: invalid choice: 'x'"),
        (["train", "--model", MODEL], "the following arguments are required: --run-dir"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        # Both ran: -1 retries as 0, 0 workers as 1.
        (["fetch-weights", "--retries", "-1"], "argument --retries: -1: must be an integer >= 0"),
        (["check-data", "--workers", "0"], "argument --workers: 0: must be an integer >= 1"),
        (["check-data", "--workers", "two"], "argument --workers: 'two' is not an integer"),
    ],
)  # fmt: skip
def test_argument_errors_are_one_line(capsys, argv: list[str], expected: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli(argv)
    assert info.value.code == 2
    _one_line_error(capsys, expected, "--help")


@pytest.mark.parametrize("command", [["run-suite"], ["estimate"], ["fetch-weights", "--check"]])
@pytest.mark.parametrize("models", ["", ","])
def test_an_empty_models_list_is_not_every_model(capsys, command: list[str], models: str) -> None:
    assert cli([*command, "--models", models]) == 2
    _one_line_error(capsys, "--models: no model named")


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("foo=1", "--set foo: not a parameter of notebooks/03_benchmark.ipynb; use one of"),
        ("max_steps", "--set 'max_steps': use key=value"),
        ("=3", "use key=value"),
        ("model=unet_resnet18", "--set model: the suite sets it per model: pass --models"),
        ("results_dir=elsewhere", "pass --results-dir"),
        ("run_name=../x", "the suite names each model's folder"),
        ("lr=[1", "--set 'lr=[1': the value is not valid YAML"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["run-suite", "estimate"])
def test_set_refuses_a_key_before_anything_runs(mini_loveda: Path, tmp_path: Path, capsys, command: str,
                                                setting: str, expected: str) -> None:
    results = tmp_path / "results"
    argv = [command, "--models", MODEL, "--data-root", str(mini_loveda), "--results-dir", str(results),
            "--set", setting]
    assert cli(argv) == 2
    err = _one_line_error(capsys, expected)
    if setting == "foo=1":
        assert "max_steps" in err and "eval_split" in err and " model," not in err
    assert not results.exists()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("eval_split=foo", "eval_split: split='foo' is not one of Train, Val, Test"),
        ("eval_mode=tiles", "eval_mode='tiles': use 'whole' or 'slide'"),
        ("crop_size=-4", "crop_size=-4"),
    ],
)
def test_run_suite_refuses_a_bad_value_before_anything_runs(mini_loveda: Path, tmp_path: Path, capsys,
                                                            setting: str, expected: str) -> None:
    """Checked for every model as the notebook will check it, before a folder is claimed."""
    results = tmp_path / "results"
    argv = ["run-suite", "--models", f"{MODEL},unet_resnet18", "--data-root", str(mini_loveda),
            "--results-dir", str(results), "--set", setting]
    assert cli(argv) == 2
    _one_line_error(capsys, expected)
    assert not results.exists()


@pytest.mark.parametrize("steps", ["0", "-2"])
def test_estimate_refuses_steps_below_one(mini_loveda: Path, capsys, steps: str) -> None:
    """They were timed all the same, in a child process, and came back as a table row's error
    (``-2``: Lightning's max_steps message), exit code 1."""
    assert cli(["estimate", "--models", MODEL, "--data-root", str(mini_loveda), "--steps", steps]) == 2
    _one_line_error(capsys, f"steps={steps}: must be a positive integer")


def test_run_suite_refuses_an_empty_results_dir(mini_loveda: Path, capsys) -> None:
    """It was read as "not given": the profile's folder (the pre-flight passed on it)."""
    argv = ["run-suite", "--models", MODEL, "--data-root", str(mini_loveda), "--results-dir", ""]
    assert cli([*argv, "--check"]) == 2
    _one_line_error(capsys, "results_dir is empty: pass a folder path")
