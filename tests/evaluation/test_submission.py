"""Tests of loveda_utils.evaluation.submission.export_submission (the LoveDA server zip)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loveda_utils.errors import DatasetNotFoundError, InvalidDataError
from loveda_utils.evaluation.inference import evaluate
from loveda_utils.evaluation.submission import export_submission

SIZE = 32


def write_predictions(run_dir: Path, split: str = "Test", seed: int = 0) -> dict[str, np.ndarray]:
    """Raw 1..7 predictions for two scenes; returns file name -> array."""
    rng = np.random.default_rng(seed)
    written = {}
    for scene, names in (("Urban", ["4191.png", "4192.png"]), ("Rural", ["5200.png"])):
        folder = run_dir / "predictions" / split / scene
        folder.mkdir(parents=True)
        for name in names:
            array = rng.integers(1, 8, (SIZE, SIZE), dtype=np.uint8)
            Image.fromarray(array).save(folder / name)
            written[name] = array
    return written


def read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        out = {}
        for name in zf.namelist():
            with Image.open(io.BytesIO(zf.read(name))) as image:
                assert image.mode == "L"
                out[name] = np.array(image)
        return out


def test_zip_holds_flat_pngs_with_values_0_to_6(tmp_path: Path) -> None:
    written = write_predictions(tmp_path)
    out = export_submission(tmp_path)
    assert out == tmp_path / "submission.zip"
    content = read_zip(out)
    assert sorted(content) == sorted(written)  # names kept, no folders
    assert all("/" not in name for name in content)
    for name, array in content.items():
        np.testing.assert_array_equal(array, written[name] - 1)
        assert array.min() >= 0 and array.max() <= 6
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_custom_out_and_split(tmp_path: Path) -> None:
    written = write_predictions(tmp_path / "run", split="Val")
    out = export_submission(tmp_path / "run", out=tmp_path / "zips" / "val.zip", split="val")
    assert out == tmp_path / "zips" / "val.zip"
    assert sorted(read_zip(out)) == sorted(written)
    with pytest.raises(DatasetNotFoundError, match="no Test predictions"):
        export_submission(tmp_path / "run")


def test_missing_run_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetNotFoundError, match=rf"run_dir {missing} does not exist.*save_pred"):
        export_submission(missing)


def test_no_predictions(tmp_path: Path) -> None:
    (tmp_path / "predictions" / "Test" / "Urban").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=r"no Test predictions in .*eval_split='Test'"):
        export_submission(tmp_path)


@pytest.mark.parametrize("bad_value", [0, 8, 255])
def test_values_outside_1_to_7(tmp_path: Path, bad_value: int) -> None:
    write_predictions(tmp_path)
    path = tmp_path / "predictions" / "Test" / "Rural" / "5200.png"
    array = np.array(Image.open(path))
    array[0, 0] = bad_value
    Image.fromarray(array).save(path)
    out = tmp_path / "submission.zip"
    out.write_bytes(b"an earlier export")
    with pytest.raises(InvalidDataError, match=rf"5200.png holds values \[{bad_value}\]"):
        export_submission(tmp_path)
    assert out.read_bytes() == b"an earlier export"  # atomic: the old zip is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions", "submission.zip"]


def test_not_single_channel(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    path = tmp_path / "predictions" / "Test" / "Urban" / "4192.png"
    Image.fromarray(np.ones((SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    with pytest.raises(InvalidDataError, match=r"4192.png has 3 channels"):
        export_submission(tmp_path)
    assert not (tmp_path / "submission.zip").exists()


def test_unreadable_png(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    path = tmp_path / "predictions" / "Test" / "Urban" / "4191.png"
    path.write_bytes(b"not a png")
    with pytest.raises(InvalidDataError, match=r"4191.png is not a readable PNG"):
        export_submission(tmp_path)


def test_duplicate_name_across_scenes(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    urban = tmp_path / "predictions" / "Test" / "Urban" / "4191.png"
    rural = tmp_path / "predictions" / "Test" / "Rural" / "4191.png"
    rural.write_bytes(urban.read_bytes())
    with pytest.raises(InvalidDataError, match=r"'4191.png' occurs twice"):
        export_submission(tmp_path)


def test_round_trip_from_evaluate(tmp_path: Path) -> None:
    """What evaluate saves for a maskless Test batch exports as its argmax 0..6."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 7, 1)
    torch.nn.init.normal_(conv.weight, std=4.0, generator=g)

    def model(images: torch.Tensor) -> torch.Tensor:
        return conv(images.float() / 255)

    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    batch = {
        "image": images,
        "scene": ["Urban", "Rural"],
        "split": ["Test", "Test"],
        "name": ["10.png", "20.png"],
    }
    result = evaluate(model, [batch], save_predictions_dir=tmp_path / "predictions")
    assert result.scores is None
    content = read_zip(export_submission(tmp_path))
    with torch.inference_mode():
        expected = model(images).argmax(1).numpy()
    np.testing.assert_array_equal(content["10.png"], expected[0])
    np.testing.assert_array_equal(content["20.png"], expected[1])
