"""Tiny runs the benchmark and training tests share: the quickest registry model, the smallest
notebook parameters that still exercise every step, notebook 03 run through papermill as the
README runs it, and a Ctrl-C at a chosen training step."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import nbformat
import papermill as pm

from loveda_utils.paths import NOTEBOOKS_DIR

MODEL = "lraspp_mobilenet_v3_large"  # the quickest registry model on a CPU
#: Notebook 03's parameters for a run of seconds on 64 px tiles (ms_flip as the notebook's default).
TINY = {
    "pretrained": "none", "max_steps": 2, "batch_size": 2, "crop_size": 32, "fps_images": 2,
    "fps_size": None, "flops_size": 64, "visual_tiles": 2, "num_workers": 0, "progress": False,
    "fps_warmup": 1,
}


def run_03(out: Path, **parameters) -> nbformat.NotebookNode:
    """Run ``notebooks/03_benchmark.ipynb`` with ``parameters`` into ``out``; the executed notebook."""
    pm.execute_notebook(str(NOTEBOOKS_DIR / "03_benchmark.ipynb"), str(out), parameters=parameters,
                        kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS_DIR))
    return nbformat.read(out, as_version=4)


class InterruptAt(L.Callback):
    """Ctrl-C as the Trainer sees it: a KeyboardInterrupt once ``step`` steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt
