"""Lightning callbacks: side concerns of training, kept out of the task's step logic."""

from __future__ import annotations

import lightning as L
import torch

from ..runtime import GB, peak_rss_gb


class PeakMemoryMonitor(L.Callback):
    """Records the peak training memory (GiB): CUDA allocator peak, or the process's peak RSS.

    The value lands in ``self.peak_gb`` and is logged as ``train/peak_mem_gb``.
    """

    def __init__(self) -> None:
        self.peak_gb: float | None = None
        self.source: str | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def _read(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            self.source = "torch.cuda.max_memory_allocated"
            return torch.cuda.max_memory_allocated(pl_module.device) / GB
        self.source = "peak RSS"
        return peak_rss_gb()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 or trainer.global_step % 50 == 0:
            pl_module.log("train/peak_mem_gb", self._read(pl_module), rank_zero_only=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.peak_gb = self._read(pl_module)
