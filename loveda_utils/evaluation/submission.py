"""Export saved predictions as a zip for the LoveDA evaluation server.

The server (the LoveDA semantic-segmentation challenge on CodaLab) wants one PNG per Test
image, named like the image, holding the class index 0..6 (background .. agriculture), with
the files at the root of the zip, not in a folder. :func:`~loveda_utils.evaluation.loop.evaluate`
saves predictions in the raw LoveDA encoding 1..7 under
``<run_dir>/predictions/<Split>/<Scene>/``; this module checks them against the split's images
(one prediction per image, each at its image's size) and converts and packs them.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.classes import NUM_CLASSES, SCENES, normalize_split
from ..data.layout import loader_images
from ..errors import ConfigError, DatasetNotFoundError, InvalidDataError
from ..files import atomic_output

__all__ = ["export_submission"]

#: Files named in a message before "and N more".
_SHOWN = 5

_HOW_TO_PREDICT = (
    "save predictions first: run notebooks/03_benchmark.ipynb with eval_split='{split}' and "
    "save_predictions=True, or call loveda_utils.evaluation.loop.evaluate(model, loader, "
    "save_predictions_dir='{predictions}')"
)


def _read_prediction(path: Path) -> np.ndarray:
    """A saved prediction as a ``[H, W]`` array of raw values 1..7; raises on anything else."""
    try:
        with Image.open(path) as image:
            bands = image.getbands()
            array = np.asarray(image)
    except (OSError, ValueError) as err:
        raise InvalidDataError(f"prediction {path} is not a readable PNG: {err}") from err
    if len(bands) != 1 or array.ndim != 2:
        raise InvalidDataError(
            f"prediction {path} has {len(bands)} channels (mode {image.mode}); predictions "
            "must be single-channel PNGs of raw LoveDA labels 1..7"
        )
    values = np.unique(array)
    bad = values[(values < 1) | (values > NUM_CLASSES)]
    if bad.size:
        raise InvalidDataError(
            f"prediction {path} holds values {bad[:10].tolist()} outside 1..{NUM_CLASSES}; "
            "saved predictions use the raw LoveDA encoding (1 background .. 7 agriculture), "
            "as written by evaluate(save_predictions_dir=...)"
        )
    return array


def _listed(items: list[str]) -> str:
    more = len(items) - _SHOWN
    return ", ".join(items[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _images(root: Path, split: str) -> dict[str, Path]:
    """The split's images by file name, as the data loader lists them."""
    images = {p.name: p for scene in SCENES for p in loader_images(root / split / scene)}
    if not images:
        raise DatasetNotFoundError(
            f"data_root {root} holds no {split} images (<Scene>/images_png/*.png for scenes "
            f"{', '.join(SCENES)}); pass the LoveDA root the run predicted (its config.yaml's data_root)"
        )
    return images


def _check_coverage(files: list[Path], images: dict[str, Path], predictions: Path, how: str) -> None:
    """One prediction per image of the split, in the image's scene, and none without one."""
    stray = [f"{p.relative_to(predictions)}" for p in files
             if p.name not in images or images[p.name].parent.parent.name != p.parent.name]
    if stray:
        raise InvalidDataError(
            f"{len(stray)} predictions in {predictions} have no image of that name in the "
            f"scene's images_png of the data root: {_listed(stray)}; remove them, or pass the "
            "data root the run predicted", problems=stray)
    predicted = {p.name for p in files}
    missing = [f"{path.parent.parent.name}/{name}" for name, path in sorted(images.items())
               if name not in predicted]
    if missing:
        raise InvalidDataError(
            f"{len(missing)} of the {len(images)} images have no prediction in {predictions}: "
            f"{_listed(missing)}; the server scores every tile of the split, so predict all of "
            f"them (eval_scenes='both', limit_eval_images=None): {how}", problems=missing)


def _encode_png(labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip_path(out: str | os.PathLike[str]) -> Path:
    """``out`` when it can name the zip: not empty, not an existing folder (checked before the
    predictions are read; the zip is written last)."""
    if not os.fspath(out).strip():
        raise ConfigError("out is empty: pass the zip's path, e.g. submission.zip")
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"out={os.fspath(out)!r} is a folder; pass the zip's file path, e.g. "
                          f"{path / 'submission.zip'}")
    return path


def export_submission(
    run_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    split: str = "Test",
) -> Path:
    """Pack ``<run_dir>/predictions/<split>/<Scene>/*.png`` into a LoveDA server zip.

    The predictions must cover the split's images under ``data_root`` exactly (one per image,
    in its scene, of its size): a partial or mismatched set would be scored as wrong, or
    refused, by the server. Each PNG is rewritten with values 0..6 (raw - 1) and stored at the
    zip root under its own file name (LoveDA image ids are unique across Urban and Rural). The
    zip is written to a temporary file and renamed into place, so an existing ``out`` is never
    left half-written, and nothing is written when a check fails.

    Args:
        run_dir: the run folder holding ``predictions/``.
        data_root: the LoveDA root the predictions were made on (a run's ``config.yaml`` names
            it as ``data_root``).
        out: the zip to write; default ``<run_dir>/submission.zip``.
        split: the split whose predictions to pack (the server scores ``Test``).

    Returns:
        The path of the written zip.

    Raises:
        DatasetNotFoundError: ``run_dir`` does not exist or holds no predictions for ``split``,
            or ``data_root`` holds no images of ``split``.
        InvalidDataError: an image has no prediction, a prediction has no image or another size
            than its image, is unreadable, not single-channel, holds a value outside 1..7, or
            two scenes hold the same file name; the message names the files.
        ConfigError: ``out`` is empty, a folder, or lies under a file.
    """
    run_dir = Path(run_dir)
    split = normalize_split(split)
    out = _zip_path(out) if out is not None else run_dir / "submission.zip"
    predictions = run_dir / "predictions" / split
    how = _HOW_TO_PREDICT.format(split=split, predictions=run_dir / "predictions")
    if run_dir.is_file():
        raise DatasetNotFoundError(f"run_dir {run_dir} is a file; pass the run folder holding "
                                   "predictions/")
    if not run_dir.is_dir():
        raise DatasetNotFoundError(f"run_dir {run_dir} does not exist; {how}")
    files = [p for scene in SCENES for p in sorted((predictions / scene).glob("*.png"))]
    if not files:
        raise DatasetNotFoundError(
            f"no {split} predictions in {predictions} (expected <Scene>/*.png for scenes "
            f"{', '.join(SCENES)}); {how}"
        )
    seen: dict[str, Path] = {}
    for path in files:
        if path.name in seen:
            raise InvalidDataError(
                f"prediction name {path.name!r} occurs twice, in {seen[path.name]} and {path}; "
                "the server zip is flat, so names must be unique across scenes: remove the "
                "stray file or re-run the prediction"
            )
        seen[path.name] = path
    images = _images(Path(data_root), split)
    _check_coverage(files, images, predictions, how)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"out={os.fspath(out)!r}: a folder on its path is a file; pass a zip "
                          "path inside a folder") from None
    wrong_size: list[str] = []
    with atomic_output(out) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            labels = _read_prediction(path) - 1
            with Image.open(images[path.name]) as image:  # the header only
                width, height = image.size
            if labels.shape != (height, width):
                wrong_size.append(f"{path.relative_to(predictions)} is {labels.shape[1]}x"
                                  f"{labels.shape[0]}, its image {width}x{height}")
                continue
            zf.writestr(path.name, _encode_png(labels))
        if wrong_size:  # raised inside the block: the temporary zip is removed
            raise InvalidDataError(
                f"{len(wrong_size)} predictions in {predictions} differ in size from their "
                f"images in {Path(data_root) / split}: {_listed(wrong_size)}; predictions must "
                f"be at the full image size: {how}", problems=wrong_size)
    return out
