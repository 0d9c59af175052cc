"""Results records and run folders as the benchmark leaves them, for the results and visuals tests.

``make_record`` writes every field of ``loveda_utils/results/schema.py``'s ``FIELDS`` with the
values a real run would (tests/results/test_schema.py checks that it stays valid), and
``write_run`` lays a run folder out as ``loveda_utils/benchmark/run.py`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loveda_utils.data.classes import CLASS_NAMES
from loveda_utils.evaluation.per_tile import PER_TILE_FILE, TileConfusions, save_per_tile
from loveda_utils.files import write_json_atomic
from loveda_utils.results.references import PublishedResult
from loveda_utils.results.schema import RECORD_SCHEMA
from loveda_utils.results.store import claim_run_dir, run_group_for

#: (model, method, backbone) of the registry entries used in the records.
DEEPLAB = ("deeplabv3plus_resnet50", "DeepLabV3+", "R-50")
PSPNET = ("pspnet_resnet101", "PSPNet", "R-101")
FCN = ("fcn_resnet50", "FCN", "R-50")


def make_record(
    model: tuple[str, str, str] = DEEPLAB,
    miou: float = 0.5099,
    synthetic: bool = False,
    created: str = "2025-01-02T03:04:05+00:00",
    run_name: str | None = None,
    root: str | Path = "/data/LoveDA",
    **overrides: Any,
) -> dict[str, Any]:
    """A complete, valid record as the benchmark writes it; ``overrides`` replace fields."""
    name, method, backbone = model
    crop, iters = overrides.pop("crop_size", 512), overrides.pop("lr_schd", 80000)
    group = run_group_for(name, synthetic, crop, iters)
    # Per-class values spread around the mIoU, so per-class tables have distinct numbers.
    per_class = {
        c: round(min(1.0, max(0.0, miou + 0.03 * (i - 3))), 4) for i, c in enumerate(CLASS_NAMES)
    }
    record = {
        "schema": RECORD_SCHEMA,
        "run_name": run_name or group,
        "run_group": group,
        "status": "complete",
        "model": name,
        "method": method,
        "backbone": backbone,
        "pretrained": "imagenet",
        "normalization": "ImageNet mean/std on 0..255",
        "crop_size": crop,
        "lr_schd": iters,
        "batch_size": 4,
        "devices": 4,
        "mem_gb": 7.3712,
        "mem_source": "torch.cuda.max_memory_allocated",
        "mem_protocol": {
            "batch": 4, "crop": crop, "precision": "32-true", "steps": 3, "optimizer": "sgd",
            "cudnn_benchmark": True,
        },
        "train_mem_gb": 11.25,
        "fps": 6.0012,
        "fps_spread": 0.1234,
        "fps_size": 1024,
        "fps_images": 195,
        "fps_warmup": 5,
        "fps_fast": 14.8731,
        "fps_fast_spread": 0.4321,
        "fps_fast_settings": {"precision": "fp16", "channels_last": True, "cudnn_benchmark": False},
        "device": "Tesla V100-SXM2-32GB",
        "precision": "16-mixed",
        "amp": False,
        "eval_amp": None,
        "miou": miou,
        "miou_ms_flip": None,
        "accuracy": 0.71,
        "mean_f1": 0.66,
        "per_class_iou": per_class,
        "per_class_iou_ms_flip": None,
        "per_scene_miou": {"urban": round(miou + 0.02, 4), "rural": round(miou - 0.03, 4)},
        "per_scene_miou_ms_flip": None,
        "miou_ci": [round(miou - 0.012, 4), round(miou + 0.011, 4)],
        "miou_ms_flip_ci": None,
        "per_scene_miou_ci": {
            "urban": [round(miou + 0.005, 4), round(miou + 0.035, 4)],
            "rural": [round(miou - 0.045, 4), round(miou - 0.015, 4)],
        },
        "bootstrap": {
            "resamples": 2000, "seed": 0, "level": 0.95, "unit": "tile", "interval": "percentile",
        },
        "params_m": 43.5812,
        "gmacs": 355.07,
        "gflops": 708.04,
        "flops_size": 1024,
        "eval_mode": "whole",
        "dataset": {
            "root": str(root),
            "split": "Val",
            "scenes": ["Urban", "Rural"],
            "n_images": 1669,
            "synthetic": synthetic,
        },
        "train_seconds": 3600.0,
        "train_segments": 1,
        "resumed_from_step": None,
        "eval_seconds": 120.5,
        "saved_predictions": None,
        "final_loss": 0.4321,
        "checkpoint": "checkpoints/last.ckpt",
        "config": {"model": name, "max_steps": iters, "limit_eval_images": None},
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "versions": {"torch": "2.14.1", "torchgeo": "0.10.1"},
        "seed": 0,
        "created": created,
    }
    record.update(overrides)
    return record


def write_run(
    results_dir: Path,
    record: dict[str, Any],
    notebook: bool = False,
    checkpoint: bool = False,
    visuals: dict[tuple[str, str, str], np.ndarray] | None = None,
) -> Path:
    """A run folder as the benchmark leaves it: claimed, params.json, metrics.json, extras."""
    run_dir = claim_run_dir(results_dir, record["run_group"], record["run_name"])
    record["run_name"] = run_dir.name
    write_json_atomic(run_dir / "params.json", record["config"])
    if notebook:
        (run_dir / "03_benchmark.ipynb").write_text("{}", encoding="utf-8")
    if checkpoint:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    for (split, scene, name), raw in (visuals or {}).items():
        folder = run_dir / "visuals" / split / scene
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw.astype(np.uint8)).save(folder / name)
    write_json_atomic(run_dir / "metrics.json", record)
    return run_dir


def predictions_for(tree: Path, split: str = "Val", wrong_from_row: int = 16) -> dict:
    """Raw 1..7 predictions of every tile of ``tree/split``: the truth, wrong below a row."""
    out = {}
    for mask_path in sorted(tree.glob(f"{split}/*/masks_png/*.png")):
        raw = np.array(Image.open(mask_path))
        pred = np.where(raw == 0, 1, raw)  # every pixel is predicted (no 0)
        pred[wrong_from_row:] = pred[wrong_from_row:] % 7 + 1  # a different class: wrong
        out[(split, mask_path.parent.parent.name, mask_path.name)] = pred
    return out


def write_runs_with_visuals(results_dir: Path, tree: Path) -> None:
    """Four runs on ``tree``'s Val tiles: two real with visuals, one real without, one synthetic."""
    preds = predictions_for(tree)
    write_run(results_dir, make_record(root=tree), visuals=preds)
    write_run(results_dir, make_record(PSPNET, 0.5186, root=tree), visuals=preds)
    write_run(results_dir, make_record(FCN, 0.42, root=tree))  # no visuals
    write_run(
        results_dir, make_record(FCN, 0.9, synthetic=True, root=tree, crop_size=64), visuals=preds
    )


# -- per-tile confusion matrices -------------------------------------------------------------------


def tile_confusion(raw_mask: np.ndarray, raw_prediction: np.ndarray) -> np.ndarray:
    """One tile's int64 ``[7, 7]`` confusion (rows ground truth), no-data (raw 0) excluded."""
    keep = raw_mask > 0
    truth, pred = raw_mask[keep].astype(np.int64) - 1, raw_prediction[keep].astype(np.int64) - 1
    n = len(CLASS_NAMES)
    return np.bincount(truth * n + pred, minlength=n * n).reshape(n, n)


def write_per_tile(run_dir: Path, tree: Path, predictions: dict) -> Path:
    """``<run_dir>/per_tile_confusion.npz`` of ``predictions`` (:func:`predictions_for`) against
    ``tree``'s masks, as a run saves it."""
    keys = sorted(predictions)
    confusion = np.stack([
        tile_confusion(np.array(Image.open(tree / s / sc / "masks_png" / n)), predictions[(s, sc, n)])
        for s, sc, n in keys
    ])  # fmt: skip
    tiles = TileConfusions(
        tuple(f"{s}/{sc}/{n}" for s, sc, n in keys), tuple(sc.lower() for _, sc, _ in keys),
        confusion.astype(np.int64),
    )  # fmt: skip
    return save_per_tile(run_dir / PER_TILE_FILE, tiles)


# -- published reference rows ---------------------------------------------------------------------


def published_row(**fields: Any) -> PublishedResult:
    """A published reference row as ``loveda_utils.results.references.load_references`` gives
    it; ``fields`` replace the defaults (an MMSeg zoo row)."""
    row: dict[str, Any] = {
        "source": "MMSegmentation model zoo", "split": "Val", "method": "DeepLabV3+",
        "backbone": "R-50-D8", "crop_size": 512, "lr_schd": 80000, "mem_gb": 7.37, "fps": 6.0,
        "device": "V100", "miou": 0.5099, "miou_ms_flip": 0.5065,
        "per_class_iou": dict.fromkeys(CLASS_NAMES), "reference": "configs/deeplabv3plus/README.md",
    }  # fmt: skip
    row.update(fields)
    return PublishedResult(**row)


def server_row(**fields: Any) -> PublishedResult:
    """A published Test-server row: per-class IoU, no training or timing facts."""
    per_class = {c: round(0.40 + 0.05 * i, 2) for i, c in enumerate(CLASS_NAMES)}
    base = {
        "source": "LoveDA paper", "split": "Test", "method": "PSPNet", "backbone": "ResNet-50",
        "crop_size": None, "lr_schd": None, "mem_gb": None, "fps": None, "device": None,
        "miou": 0.483, "miou_ms_flip": None, "per_class_iou": per_class,
        "reference": "test-server scores",
    }  # fmt: skip
    return published_row(**{**base, **fields})
