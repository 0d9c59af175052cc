"""Atomic writes (loveda_utils/files.py): a reader sees the old file or the complete new one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from loveda_utils import files
from loveda_utils.files import write_json_atomic


def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(
        path, {"miou": float("nan"), "fps": np.float32(2.5), "dir": tmp_path, "n": np.int64(3)}
    )
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == {"miou": None, "fps": 2.5, "dir": str(tmp_path), "n": 3}
    assert text.startswith('{\n  "miou": null')  # indent 2
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_write_json_atomic_keeps_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"v": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object()})  # not serialisable
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["metrics.json"]

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"v": 2})  # fails after the temp file was written
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["metrics.json"]
