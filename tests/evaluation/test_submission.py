"""Tests of loveda_utils.evaluation.submission.export_submission (the LoveDA server zip) and the
``export-submission`` command: the zip's format, and every refusal naming its files (issue #11)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loveda_utils.cli import main as cli
from loveda_utils.errors import DatasetNotFoundError, InvalidDataError
from loveda_utils.evaluation.loop import evaluate
from loveda_utils.evaluation.submission import export_submission
from loveda_utils.training.recipe import CONFIG_FILE

SIZE = 32
#: The tiles of the test tree, by scene (LoveDA ids: unique across the scenes).
TILES = (("Urban", ["4191.png", "4192.png"]), ("Rural", ["5200.png"]))


def write_images(root: Path, split: str = "Test", tiles=TILES, size: int = SIZE) -> Path:
    """RGB images of ``size`` px in LoveDA's layout: ``root/<split>/<Scene>/images_png/<name>``."""
    for scene, names in tiles:
        folder = root / split / scene / "images_png"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(np.zeros((size, size, 3), dtype=np.uint8)).save(folder / name)
    return root


def write_predictions(run_dir: Path, split: str = "Test", seed: int = 0) -> dict[str, np.ndarray]:
    """Raw 1..7 predictions for two scenes, and their images under ``run_dir/data``; returns
    file name -> array."""
    rng = np.random.default_rng(seed)
    written = {}
    for scene, names in TILES:
        folder = run_dir / "predictions" / split / scene
        folder.mkdir(parents=True)
        for name in names:
            array = rng.integers(1, 8, (SIZE, SIZE), dtype=np.uint8)
            Image.fromarray(array).save(folder / name)
            written[name] = array
    write_images(run_dir / "data", split)
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
    out = export_submission(tmp_path, tmp_path / "data")
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
    data = tmp_path / "run" / "data"
    out = export_submission(tmp_path / "run", data, out=tmp_path / "zips" / "val.zip", split="val")
    assert out == tmp_path / "zips" / "val.zip"
    assert sorted(read_zip(out)) == sorted(written)
    with pytest.raises(DatasetNotFoundError, match="no Test predictions"):
        export_submission(tmp_path / "run", data)


def test_missing_run_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetNotFoundError, match=rf"run_dir {missing} does not exist.*save_pred"):
        export_submission(missing, tmp_path)


def test_no_predictions(tmp_path: Path) -> None:
    (tmp_path / "predictions" / "Test" / "Urban").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=r"no Test predictions in .*eval_split='Test'"):
        export_submission(tmp_path, tmp_path / "data")


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
        export_submission(tmp_path, tmp_path / "data")
    assert out.read_bytes() == b"an earlier export"  # atomic: the old zip is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "predictions", "submission.zip"]


def test_not_single_channel(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    path = tmp_path / "predictions" / "Test" / "Urban" / "4192.png"
    Image.fromarray(np.ones((SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    with pytest.raises(InvalidDataError, match=r"4192.png has 3 channels"):
        export_submission(tmp_path, tmp_path / "data")
    assert not (tmp_path / "submission.zip").exists()


def test_unreadable_png(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    path = tmp_path / "predictions" / "Test" / "Urban" / "4191.png"
    path.write_bytes(b"not a png")
    with pytest.raises(InvalidDataError, match=r"4191.png is not a readable PNG"):
        export_submission(tmp_path, tmp_path / "data")


def test_duplicate_name_across_scenes(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    urban = tmp_path / "predictions" / "Test" / "Urban" / "4191.png"
    rural = tmp_path / "predictions" / "Test" / "Rural" / "4191.png"
    rural.write_bytes(urban.read_bytes())
    with pytest.raises(InvalidDataError, match=r"'4191.png' occurs twice"):
        export_submission(tmp_path, tmp_path / "data")


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
    data = write_images(tmp_path / "data", tiles=(("Urban", ["10.png"]), ("Rural", ["20.png"])))
    content = read_zip(export_submission(tmp_path, data))
    with torch.inference_mode():
        expected = model(images).argmax(1).numpy()
    np.testing.assert_array_equal(content["10.png"], expected[0])
    np.testing.assert_array_equal(content["20.png"], expected[1])


# -- the checks against the split's images --------------------------------------------------------


def _refused(run_dir: Path, match: str) -> InvalidDataError:
    out = run_dir / "submission.zip"
    with pytest.raises(InvalidDataError, match=match) as info:
        export_submission(run_dir, run_dir / "data")
    assert not out.exists()  # nothing written
    return info.value


def test_an_image_without_prediction_is_named(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    (tmp_path / "predictions" / "Test" / "Rural" / "5200.png").unlink()
    error = _refused(tmp_path, r"1 of the 3 images have no prediction in .*predictions/Test: "
                               r"Rural/5200.png; the server scores every tile")
    assert error.problems == ["Rural/5200.png"]


def test_a_prediction_without_image_is_named(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    stray = tmp_path / "predictions" / "Test" / "Urban" / "9999.png"
    stray.write_bytes((tmp_path / "predictions" / "Test" / "Urban" / "4191.png").read_bytes())
    _refused(tmp_path, r"1 predictions in .* have no image of that name .*: Urban/9999.png")


def test_a_prediction_in_the_wrong_scene_is_named(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    urban = tmp_path / "predictions" / "Test" / "Urban"
    (urban / "4192.png").rename(tmp_path / "predictions" / "Test" / "Rural" / "4192.png")
    _refused(tmp_path, r"have no image of that name in the scene's images_png.*: Rural/4192.png")


def test_a_prediction_of_another_size_is_named(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    out = tmp_path / "submission.zip"
    out.write_bytes(b"an earlier export")
    small = tmp_path / "predictions" / "Test" / "Urban" / "4192.png"
    Image.fromarray(np.ones((SIZE // 2, SIZE), dtype=np.uint8)).save(small)
    with pytest.raises(InvalidDataError, match=rf"1 predictions .* differ in size from their images"
                       rf".*: Urban/4192.png is {SIZE}x{SIZE // 2}, its image {SIZE}x{SIZE}"):
        export_submission(tmp_path, tmp_path / "data")
    assert out.read_bytes() == b"an earlier export"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_data_root_without_the_split_is_named(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=rf"data_root {tmp_path / 'nowhere'} holds no "
                       "Test images"):
        export_submission(tmp_path, tmp_path / "nowhere")


def test_many_missing_files_are_counted_and_the_first_named(tmp_path: Path) -> None:
    tiles = (("Urban", [f"{i}.png" for i in range(10)]), ("Rural", ["5200.png"]))
    write_images(tmp_path / "data", tiles=tiles)
    folder = tmp_path / "predictions" / "Test" / "Rural"
    folder.mkdir(parents=True)
    Image.fromarray(np.ones((SIZE, SIZE), dtype=np.uint8)).save(folder / "5200.png")
    error = _refused(tmp_path, r"10 of the 11 images .*: Urban/0.png, .*Urban/4.png and 5 more")
    assert len(error.problems) == 10


# -- the command ----------------------------------------------------------------------------------


def test_the_command_reads_the_data_root_from_the_runs_config(tmp_path: Path, capsys) -> None:
    written = write_predictions(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(f"model: x\ndata_root: {tmp_path / 'data'}\n")
    assert cli(["export-submission", str(tmp_path)]) == 0
    assert sorted(read_zip(tmp_path / "submission.zip")) == sorted(written)
    assert f"checked against {tmp_path / 'data'}" in capsys.readouterr().out


def test_the_command_refuses_with_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    write_predictions(tmp_path)
    assert cli(["export-submission", str(tmp_path)]) == 2  # no config.yaml, no --data-root
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no {CONFIG_FILE}" in err and "--data-root" in err
    (tmp_path / "predictions" / "Test" / "Urban" / "4191.png").unlink()
    assert cli(["export-submission", str(tmp_path), "--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Urban/4191.png" in err and not (tmp_path / "submission.zip").exists()


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("{tmp}", "out='{tmp}' is a folder; pass the zip's file path, e.g. {tmp}/submission.zip"),
        ("{tmp}/afile/x.zip", "out='{tmp}/afile/x.zip': a folder on its path is a file"),
        ("", "out is empty: pass the zip's path"),
    ],
)
def test_an_out_that_cannot_be_the_zip_is_one_line(tmp_path: Path, capsys, out: str, message: str) -> None:
    """A folder, or a path under a file, was a raw IsADirectoryError/FileExistsError."""
    write_predictions(tmp_path)
    (tmp_path / "afile").write_text("kept", encoding="utf-8")
    argv = ["export-submission", str(tmp_path), "--data-root", str(tmp_path / "data"),
            "--out", out.format(tmp=tmp_path)]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(tmp=tmp_path) in err, err
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "kept"
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".*.tmp"))


def test_a_run_dir_that_is_a_file_is_named_as_one(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "run"
    afile.write_text("not a run", encoding="utf-8")
    assert cli(["export-submission", str(afile), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run_dir {afile} is a file; pass the run folder" in err
