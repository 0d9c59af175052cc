"""Run folders: names, claiming, reading records, completed runs and the resume rule."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from record_factory import FCN, PSPNET, make_record, write_run

from loveda_utils.errors import ConfigError
from loveda_utils.results.store import (
    claim_run_dir,
    completed_runs,
    load_records,
    run_group_for,
    unfinished_group_run,
    unfinished_run,
)


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


def test_unfinished_run(tmp_path: Path) -> None:
    assert unfinished_run(tmp_path, None) is None
    assert unfinished_run(tmp_path, "never-claimed") is None
    claimed = claim_run_dir(tmp_path, "grp", "mine")
    assert unfinished_run(tmp_path, "mine") == claimed  # pre-claimed, no record: resume here
    write_run(tmp_path, make_record(run_name="done"))
    assert unfinished_run(tmp_path, "done") is None  # a record is never written over


def test_unfinished_group_run(tmp_path: Path) -> None:
    group = make_record()["run_group"]
    assert unfinished_group_run(tmp_path, group) is None  # no runs/ yet
    first = write_run(tmp_path, make_record())
    assert unfinished_group_run(tmp_path, group) is None  # the newest finished
    crashed = claim_run_dir(tmp_path, group)
    assert crashed.name == f"{group}-r2"
    assert unfinished_group_run(tmp_path, group) == crashed
    # Other groups sharing the prefix, and names that are not attempts, are not this group's.
    claim_run_dir(tmp_path, group + "x")
    claim_run_dir(tmp_path, "grp", f"{group}-rx")
    assert unfinished_group_run(tmp_path, group) == crashed
    # Attempts are ordered by number, not by name (r10 after r9).
    for _ in range(8):
        latest = claim_run_dir(tmp_path, group)
    assert latest.name == f"{group}-r10"
    assert unfinished_group_run(tmp_path, group) == latest
    # Once the newest attempt holds a record, older unfinished ones are not resumed.
    (latest / "metrics.json").write_text("{}", encoding="utf-8")
    assert unfinished_group_run(tmp_path, group) is None
    assert first.is_dir() and crashed.is_dir()
