"""Notebooks 01 and 02 run clean under papermill on a generated mini-LoveDA."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill as pm
import pytest

from loveda_utils.paths import NOTEBOOKS_DIR

pytestmark = pytest.mark.slow


def _run(name: str, out: Path, **parameters) -> nbformat.NotebookNode:
    pm.execute_notebook(str(NOTEBOOKS_DIR / name), str(out), parameters=parameters,
                        kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS_DIR))
    return nbformat.read(out, as_version=4)


def _images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def _text(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_committed_notebooks_have_no_outputs() -> None:
    for path in sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"


def test_dataset_inspection_notebook(mini_loveda: Path, tmp_path: Path) -> None:
    nb = _run("01_dataset_inspection.ipynb", tmp_path / "01.ipynb", data_root=str(mini_loveda))
    text = _text(nb)
    assert "synthetic: True" in text and "OK: no problems found." in text
    assert _images(nb) >= 3  # frequencies per labelled split + sample grids


def test_transforms_notebook(mini_loveda: Path, tmp_path: Path) -> None:
    nb = _run("02_transforms.ipynb", tmp_path / "02.ipynb", data_root=str(mini_loveda), draws=2)
    text = _text(nb)
    assert "RandomCropCatMax" in text and "crop 48" in text
    assert _images(nb) >= 4
