"""Lightning callbacks: side concerns of training, kept out of the task's step logic."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

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

    def read(self, pl_module: L.LightningModule) -> float:
        """The peak so far (GiB); sets ``self.source`` to how it was read."""
        if pl_module.device.type == "cuda":
            self.source = "torch.cuda.max_memory_allocated"
            return torch.cuda.max_memory_allocated(pl_module.device) / GB
        self.source = "peak RSS"
        return peak_rss_gb()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 or trainer.global_step % 50 == 0:
            pl_module.log("train/peak_mem_gb", self.read(pl_module), rank_zero_only=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.peak_gb = self.read(pl_module)


class RunCheckpoint(ModelCheckpoint):
    """The run folder's one resumable checkpoint, ``checkpoints/last.ckpt``: written every
    ``every_n_train_steps``, at the last step, and when training is stopped (Ctrl-C, SIGTERM).

    Three gaps of Lightning's ``ModelCheckpoint(save_last=True)`` closed here:

    * it writes ``last-v1.ckpt`` beside an existing ``last.ckpt`` when its state was not restored
      from the resumed checkpoint, and its state key holds the interval, so resuming with another
      ``max_steps`` did exactly that, leaving the stale ``last.ckpt`` for the next resume and the
      record to name. Here the name never gets a version and the state key does not depend on
      the interval;
    * at the end of training it writes ``last.ckpt`` only if it wrote none before in that fit,
      so a last step between two intervals was never saved. Here the last step always is;
    * an interrupted fit kept only the previous interval's checkpoint. Here a ``KeyboardInterrupt``
      (SIGINT) or Lightning's ``SIGTERMException`` (it stops at a step boundary on SIGTERM) saves
      the steps done first, on a single process: with several, saving is collective and the
      other ranks may not have stopped at the same point, so DDP runs keep the interval's.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int) -> None:
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)

    @property
    def state_key(self) -> str:
        return type(self).__qualname__

    @property
    def saved_step(self) -> int | None:
        """The step of the last checkpoint this fit wrote (``None``: none yet)."""
        return self._last_global_step_saved if self._last_checkpoint_saved else None

    def _save_last_now(self, trainer: L.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # fitting, and this step not saved yet
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_now(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException) and trainer.world_size == 1:
            self._save_last_now(trainer)
