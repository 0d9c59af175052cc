"""Section 6: peak memory of whole evaluations of growing length, each in a fresh process."""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from functools import partial
from typing import Any

import torch

from loveda_utils.data.datamodule import LoveDADataModule
from loveda_utils.evaluation.loop import evaluate
from loveda_utils.models import build_model
from loveda_utils.paths import PROJECT_ROOT
from loveda_utils.runtime import GB, peak_rss_gb, reset_peak_rss, rss_gb

from .report import Ratio, Report, Row, progress
from .settings import Settings
from .tiles import TileStore
from .timing import timed


def memory_child(spec_json: str) -> None:
    """In a fresh process: one whole evaluation, then its peak memory as one JSON line."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = build_model(spec["model"], pretrained="none").eval().to(device)
    rss_model = rss_gb()
    # ru_maxrss would carry the parent's size over fork+exec; VmHWM, reset here, is this
    # process's own peak from the model onwards.
    hwm = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    datamodule = LoveDADataModule(
        spec["root"],
        eval_split="val",
        eval_scenes=spec["scenes"],
        eval_batch_size=spec["batch_size"],
        num_workers=spec["workers"],
    )
    rss_batches: list[float] = []

    def batches(loader):  # resident memory as each batch arrives: growth would show here
        for batch in loader:
            rss_batches.append(rss_gb())
            yield batch

    start = time.perf_counter()
    result = evaluate(model, batches(datamodule.val_dataloader()), device=device)
    seconds = time.perf_counter() - start
    del datamodule
    gc.collect()  # joins the workers, so their peak lands in RUSAGE_CHILDREN
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    out = {
        "n_images": result.n_images,
        "seconds": seconds,
        "rss_after_model_gb": rss_model,
        "rss_second_batch_gb": rss_batches[min(1, len(rss_batches) - 1)],
        "rss_last_batch_gb": rss_batches[-1],
        "peak_rss_gb": rss_gb("VmHWM") if hwm else peak_rss_gb(),
        "peak_source": "VmHWM from the model on" if hwm else "ru_maxrss",
        "peak_worker_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / GB,
        "cuda_peak_gb": torch.cuda.max_memory_allocated(device) / GB
        if device.type == "cuda"
        else None,
        "miou": result.miou,
    }
    print("MEMORY " + json.dumps(out), flush=True)


def measure_memory(
    report: Report, store: TileStore, args: argparse.Namespace, settings: Settings
) -> None:
    """Section 6: peak memory of evaluations of growing length, each in a fresh process."""
    name, size = args.memory_model, args.memory_size
    peaks: dict[int, dict[str, Any]] = {}
    for n in args.memory_tiles:
        tiles = store.get(size, n)
        spec = {
            "model": name,
            "root": str(tiles.root),
            "scenes": list(tiles.scenes),
            "batch_size": settings.batch_size,
            "workers": settings.workers,
            "device": str(settings.device),
            "threads": torch.get_num_threads(),
        }
        progress(f"memory, {name} at {size} px: {n} tiles in a fresh process ...")
        done, background = timed(
            partial(
                subprocess.run,
                [sys.executable, "-m", __name__, json.dumps(spec)],
                capture_output=True,
                text=True,
                cwd=PROJECT_ROOT,
                check=False,
            )
        )
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("MEMORY ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"memory probe for {n} tiles failed:\n{done.stderr[-2000:]}")
        peaks[n] = json.loads(line.removeprefix("MEMORY "))
        p = peaks[n]
        cuda = f"; CUDA peak {p['cuda_peak_gb']:.3f} GiB" if p["cuda_peak_gb"] is not None else ""
        workers = f"; largest worker {p['peak_worker_rss_gb']:.3f} GiB" if settings.workers else ""
        report.add(
            Row(
                "memory",
                name,
                size,
                f"evaluate {n} tiles (fresh process)",
                [p["seconds"]],
                n,
                "tile",
                f"peak RSS {p['peak_rss_gb']:.3f} GiB ({p['peak_source']}); RSS model loaded "
                f"{p['rss_after_model_gb']:.3f}, at batch 2 {p['rss_second_batch_gb']:.3f}, at "
                f"the last batch {p['rss_last_batch_gb']:.3f}{workers}{cuda}",
                background=background,
            )
        )
    low, high = min(peaks), max(peaks)
    key = "cuda_peak_gb" if peaks[low]["cuda_peak_gb"] is not None else "peak_rss_gb"
    report.ratios.append(
        Ratio(
            f"memory {high}/{low} tiles",
            f"{name} {size}px ({key.removesuffix('_gb')})",
            peaks[high][key] / peaks[low][key],
            "memory 128/8 tiles",
            ", ".join(f"{n}: {p[key]:.3f} GiB" for n, p in peaks.items()),
        )
    )


if __name__ == "__main__":  # the fresh process of measure_memory
    memory_child(sys.argv[1])
