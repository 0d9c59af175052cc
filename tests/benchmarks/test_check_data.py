"""Functional test of ``benchmarks/check_data.py``: every mode is timed and printed.

Tiny on purpose (the 64 px test tree, one pass); it asserts nothing about speed: timings belong
to the benchmark's own run (``check-data --help`` quotes it), never to a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.check_data import main


def test_every_mode_is_printed(tiny_tree: Path, capsys: pytest.CaptureFixture) -> None:
    main([str(tiny_tree), "--splits", "Train,Val", "--scenes", "Urban,Rural", "--passes", "1"])
    out = capsys.readouterr().out
    assert f"{tiny_tree}: 8 tiles (Train,Val / Urban,Rural), best of 1" in out
    rows = [line.split() for line in out.splitlines()[2:]]
    modes = [" ".join(r[:-4]) for r in rows]
    assert {"quick", "quick --no-manifest", "full", "full --no-manifest"} == set(modes)
    assert all(float(r[-3]) > 0 and float(r[-1]) > 0 for r in rows)
