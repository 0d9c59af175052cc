"""The record schema: one FIELDS table gives the validator, the builder's key check and the docs."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import REPO
from record_factory import make_record

from loveda_utils.errors import ConfigError, RecordError
from loveda_utils.paths import PUBLISHED_RESULTS_DIRS
from loveda_utils.results import schema
from loveda_utils.results.schema import (
    CONTRACTS_END,
    CONTRACTS_START,
    FIELDS,
    RECORD_SCHEMA,
    check_record_keys,
    contracts_table,
    record_created,
    validate_record,
)
from loveda_utils.results.store import completed_runs, load_records, run_group_for

BUILDER = REPO / "loveda_utils" / "benchmark" / "run.py"


def _builder_keys() -> set[str]:
    """The keys of the dict literal the record builder hands to ``check_record_keys``."""
    tree = ast.parse(BUILDER.read_text(encoding="utf-8"))
    calls = [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check_record_keys"
    ]  # fmt: skip
    assert len(calls) == 1, f"{BUILDER}: the record builder must call check_record_keys once"
    (literal,) = calls[0].args
    assert isinstance(literal, ast.Dict)
    return {k.value for k in literal.keys if isinstance(k, ast.Constant)}


def test_fields_are_what_the_builder_writes() -> None:
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names))
    assert _builder_keys() == set(names)


def test_validate_record() -> None:
    assert validate_record(make_record()) == []
    record = make_record()
    del record["fps"]
    record["crop_size"] = "512"
    record["miou"] = 50.99  # percent by mistake
    record["per_class_iou"]["road"] = -0.1
    record["dataset"]["synthetic"] = "no"
    record["eval_mode"] = "tiles"
    record["created"] = "yesterday"
    problems = "\n".join(validate_record(record))
    assert "missing field 'fps'" in problems
    assert "crop_size is str" in problems
    assert "miou = 50.99 is outside [0, 1]" in problems
    assert "per_class_iou['road']" in problems
    assert "dataset.synthetic" in problems
    assert "eval_mode is 'tiles', expected one of ['whole', 'slide']" in problems
    assert "created='yesterday' is not an ISO 8601 time" in problems
    # A checkpoint evaluated here (no training), outside a git checkout: still valid.
    evaluated = make_record(
        lr_schd=0, mem_gb=None, mem_source=None, precision=None, git_commit=None,
        final_loss=None, train_seconds=None, normalization=None,
    )  # fmt: skip
    assert validate_record(evaluated) == []
    assert validate_record([1]) == ["a record must be a JSON object, got list"]
    assert any("lr_schd" in p for p in validate_record(make_record(lr_schd=True)))  # bool != int
    # A newer schema version is reported as such, not as a list of field problems.
    assert validate_record(make_record(schema=RECORD_SCHEMA + 1)) == [
        f"schema is {RECORD_SCHEMA + 1}, this version reads schemas 1..{RECORD_SCHEMA}: update the package"
    ]


def test_records_of_an_older_schema_stay_valid_without_newer_fields() -> None:
    """A schema-1 record (written before the bootstrap intervals existed) is read as it is,
    while a current record without them is refused."""
    added = [f.name for f in schema.FIELDS if f.since > 1]
    assert added  # the intervals of schema 2
    old = make_record(schema=1)
    for name in added:
        del old[name]
    assert validate_record(old) == []
    current = make_record()
    del current[added[0]]
    assert validate_record(current) == [f"missing field {added[0]!r}"]
    # ...and an old record may not carry a field its version did not have.
    assert any(added[0] in p for p in validate_record({**old, added[0]: None}))


def test_validate_record_refuses_unknown_and_missing_keys() -> None:
    record = make_record(miou_std=[0.4, 0.5])
    record["dataset"]["tiles"] = 3
    del record["dataset"]["n_images"]
    problems = "\n".join(validate_record(record))
    assert "unknown field(s) ['miou_std']" in problems and "FIELDS" in problems
    assert "'dataset.tiles'" in problems and "missing field 'dataset.n_images'" in problems
    per_class = make_record()
    per_class["per_class_iou"]["cloud"] = 0.1
    del per_class["per_class_iou"]["water"]
    problems = "\n".join(validate_record(per_class))
    assert "per_class_iou lacks ['water']" in problems and "unknown keys ['cloud']" in problems
    # The reader's own keys (``_run_dir``) are not record fields.
    assert validate_record({**make_record(), "_run_dir": "runs/x"}) == []


def test_check_record_keys() -> None:
    record = make_record()
    assert check_record_keys(record) is record
    with pytest.raises(RecordError, match="missing field 'final_loss'"):
        check_record_keys({k: v for k, v in make_record().items() if k != "final_loss"})
    with pytest.raises(RecordError, match=r"unknown field\(s\) \['miou_std'\]"):
        check_record_keys(make_record(miou_std=None))
    with pytest.raises(RecordError, match="_run_dir"):  # the reader's key is not written
        check_record_keys({**make_record(), "_run_dir": "runs/x"})
    # Types are the validator's business: the builder check only guards the key set.
    assert check_record_keys(make_record(fps="fast"))["fps"] == "fast"


#: A record as an early demo run wrote it (schema 1, before the intervals and single-domain runs),
#: kept byte for byte in a results folder of its own: old records must stay readable.
SCHEMA_1_RESULTS = Path(__file__).parent / "fixtures" / "schema1"


def test_repository_records_stay_valid() -> None:
    """The published runs are valid LoveDA records (no synthetic one among them), and a
    schema-1 record still reads, and is still found in its run group, as the package is now."""
    for folder in PUBLISHED_RESULTS_DIRS:
        for path in sorted((folder / "runs").glob("*/metrics.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            assert validate_record(record) == [], path
            assert not record["dataset"]["synthetic"], f"{path}: synthetic, among the published runs"
    records, problems = load_records(SCHEMA_1_RESULTS)
    assert problems == [] and [r["schema"] for r in records] == [1]
    (old,) = records
    assert old["config"]["train_scenes"] == "both" and old["dataset"]["synthetic"] is True
    group = run_group_for(old["model"], True, old["crop_size"], old["lr_schd"], train_scenes="both")
    assert old["run_group"] == group
    assert completed_runs(SCHEMA_1_RESULTS, group) == [old["_run_dir"]]


def test_record_created() -> None:
    assert record_created(make_record(created="2025-01-01T00:00:00")).tzinfo is not None
    assert record_created({"created": "soon"}) < record_created(make_record())


# -- docs/CONTRACTS.md ------------------------------------------------------------------------


def test_contracts_md_matches_fields() -> None:
    current = schema.contracts_section(schema.CONTRACTS_FILE)
    assert current == contracts_table(), (
        f"{schema.CONTRACTS_FILE} differs from FIELDS: run `{schema.REGENERATE}`"
    )
    for f in FIELDS:
        assert f"| `{f.name}` |" in current
        for sub in f.fields:
            assert f"| `{f.name}.{sub.name}` |" in current


def test_write_contracts_replaces_only_the_section(tmp_path: Path) -> None:
    doc = tmp_path / "CONTRACTS.md"
    before, after = "# Contracts\r\n\r\nintro  \r\n", "\r\n## Later\r\nkeep \u00e9\r\n"
    doc.write_bytes(f"{before}{CONTRACTS_START}\r\nstale\r\n{CONTRACTS_END}{after}".encode())
    assert schema.main(["--check-contracts", "--contracts", str(doc)]) == 1
    assert schema.write_contracts(doc) is True
    data = doc.read_bytes().decode()
    assert data.startswith(before + CONTRACTS_START) and data.endswith(CONTRACTS_END + after)
    assert "stale" not in data and "| `per_scene_miou` |" in data
    assert schema.write_contracts(doc) is False  # idempotent
    assert schema.main(["--check-contracts", "--contracts", str(doc)]) == 0
    doc.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=CONTRACTS_START):
        schema.write_contracts(doc)


def test_check_contracts_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "CONTRACTS.md"
    doc.write_text(f"{CONTRACTS_START}\n| `schema` | int |\n{CONTRACTS_END}\n", encoding="utf-8")
    assert schema.main(["--check-contracts", "--contracts", str(doc)]) == 1
    assert schema.REGENERATE in capsys.readouterr().err
