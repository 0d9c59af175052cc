"""Tests of ``python -m loveda_utils compare`` (loveda_utils.results.compare): a paired bootstrap
over the tiles two run folders evaluated."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from loveda_utils.cli import main as cli
from loveda_utils.data.classes import CLASS_NAMES, NUM_CLASSES
from loveda_utils.errors import ConfigError
from loveda_utils.evaluation.bootstrap import BootstrapSettings, paired_bootstrap
from loveda_utils.evaluation.per_tile import PER_TILE_FILE, TileConfusions, save_per_tile
from loveda_utils.results.compare import compare_runs, format_comparison

C = NUM_CLASSES


def tiles_of(n: int, seed: int, names: list[str] | None = None) -> TileConfusions:
    rng = np.random.default_rng(seed)
    counts = np.zeros((n, C, C), dtype=np.int64)
    for i in range(n):
        truth = rng.integers(0, C, 2000)
        pred = np.where(rng.random(2000) < 0.6, truth, rng.integers(0, C, 2000))
        np.add.at(counts[i], (truth, pred), 1)
    names = names or [f"Val/{'Urban' if i % 2 else 'Rural'}/{100 + i}.png" for i in range(n)]
    scenes = [name.split("/")[1].lower() for name in names]
    return TileConfusions(tuple(names), tuple(scenes), counts)


def improved(tiles: TileConfusions) -> TileConfusions:
    """The same tiles with 10 wrong pixels of each tile made right."""
    counts = tiles.confusion.copy()
    for tile in counts:
        t, p = next((t, p) for t in range(C) for p in range(C) if t != p and tile[t, p] >= 10)
        tile[t, p] -= 10
        tile[t, t] += 10
    return TileConfusions(tiles.names, tiles.scenes, counts)


def run_folder(root: Path, name: str, tiles: TileConfusions, ms: TileConfusions | None = None) -> Path:
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    save_per_tile(folder / PER_TILE_FILE, tiles, ms)
    return folder


def test_identical_runs_print_a_zero_difference(tmp_path: Path, capsys) -> None:
    tiles = tiles_of(20, seed=0)
    a, b = run_folder(tmp_path, "a", tiles), run_folder(tmp_path, "b", tiles)
    assert cli(["compare", str(a), str(b), "--resamples", "300"]) == 0
    out = capsys.readouterr().out
    assert "over the 20 tiles both runs evaluated" in out and "300 resamples, seed 0" in out
    assert re.search(r"^  mIoU +\+0\.00  \[\+0\.00, \+0\.00\]$", out, re.MULTILINE)
    assert "0 outside the interval" not in out
    assert all(f"  {name}" in out for name in CLASS_NAMES)


def test_a_better_run_is_paired_by_tile_name(tmp_path: Path, capsys) -> None:
    a_tiles = tiles_of(30, seed=1)
    b_tiles = improved(a_tiles)
    shuffled = b_tiles.select(np.random.default_rng(0).permutation(30))  # another tile order
    a = run_folder(tmp_path, "a", a_tiles)
    b = run_folder(tmp_path, "b", shuffled)
    comparison = compare_runs(a, b, settings=BootstrapSettings(400, 2))
    expected = paired_bootstrap(a_tiles.confusion, b_tiles.confusion, settings=BootstrapSettings(400, 2))
    assert comparison.paired.ci == expected.ci  # B was put back in A's order before pairing
    assert comparison.paired.difference == expected.difference
    assert comparison.paired.significant and comparison.paired.ci[0] > 0

    assert cli(["compare", str(a), str(b), "--resamples", "400", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip().startswith("mIoU ")]
    assert len(lines) == 1 and lines[0].endswith("0 outside the interval")
    assert f"{100 * expected.difference:+.2f}" in lines[0]
    assert f"mIoU {100 * expected.miou_b:.2f}" in out
    assert out == format_comparison(comparison) + "\n"


def test_ms_flip_matrices_compare_with_the_flag(tmp_path: Path, capsys) -> None:
    tiles = tiles_of(10, seed=3)
    a = run_folder(tmp_path, "a", tiles, ms=tiles)
    b = run_folder(tmp_path, "b", tiles, ms=improved(tiles))
    assert compare_runs(a, b, settings=BootstrapSettings(100)).paired.difference == 0.0
    ms = compare_runs(a, b, ms_flip=True, settings=BootstrapSettings(100))
    assert ms.ms_flip and ms.paired.difference > 0
    assert cli(["compare", str(a), str(b), "--ms-flip", "--resamples", "100"]) == 0
    assert capsys.readouterr().out.startswith("ms+flip mIoU, B - A")


def test_runs_over_different_tiles_are_refused(tmp_path: Path, capsys) -> None:
    tiles = tiles_of(12, seed=4)
    fewer = tiles.select(range(8))
    renamed = tiles_of(12, seed=4, names=[*tiles.names[:10], "Val/Rural/x.png", "Val/Rural/y.png"])
    a = run_folder(tmp_path, "a", tiles)
    assert cli(["compare", str(a), str(run_folder(tmp_path, "fewer", fewer))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the runs evaluated different tiles")
    assert f"4 only in {a}" in err and "Val/Rural/108.png" in err and "..." in err
    with pytest.raises(ConfigError, match=r"2 only in \S+a \(e.g. Val/Rural/110.png, "
                                          r"Val/Urban/111.png\); 2 only in \S+renamed"):
        compare_runs(a, run_folder(tmp_path, "renamed", renamed))


def test_missing_folder_or_file_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    tiles = tiles_of(5, seed=5)
    a = run_folder(tmp_path, "a", tiles)
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    cases = [
        ([str(a), str(tmp_path / "nowhere")], "does not exist"),
        ([str(a), str(empty)], f"{PER_TILE_FILE} not found"),
        ([str(a), str(a), "--ms-flip"], "holds no ms+flip matrices"),
        ([str(a), str(a), "--level", "95"], "level must be in (0, 1)"),
    ]
    for argv, message in cases:
        assert cli(["compare", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    (empty / PER_TILE_FILE).write_bytes(b"damaged")
    assert cli(["compare", str(a), str(empty)]) == 2
    assert "is not a readable" in capsys.readouterr().err


def test_the_command_runs_as_a_process(tmp_path: Path) -> None:
    tiles = tiles_of(6, seed=6)
    a = run_folder(tmp_path, "a", tiles)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "loveda_utils", "compare", str(a), str(a),
                         "--resamples", "50"], capture_output=True, text=True, env=env, cwd=REPO)
    assert ok.returncode == 0 and "over the 6 tiles" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "loveda_utils", "compare", str(a),
                          str(tmp_path / "missing")], capture_output=True, text=True, env=env,
                         cwd=REPO)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
