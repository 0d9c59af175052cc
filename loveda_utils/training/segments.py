"""Training segments: what each start of a run trained, kept inside the run's checkpoints.

A run stopped (Ctrl-C, a time limit, a crash) and resumed trains in segments, one per fit. Its
record must still state the facts of the whole training: the time summed over the segments,
the peak memory of the worst one, the loss at the last step, and that it was resumed and from
which step. :class:`SegmentLog` writes the list of segments up to a checkpoint's step into the
checkpoint itself (``checkpoint["training_segments"]``, plain values, so it loads with
``weights_only=True``) and reads it back when a fit resumes from it. The facts are saved with
the weights they describe, in Lightning's one atomic write: a checkpoint moved aside takes its
history with it, which a file beside it would not.

A segment's time runs from Lightning's ``on_train_start`` to its last checkpoint: steps done
after that checkpoint are trained again by the next segment and counted there.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L

from .callbacks import PeakMemoryMonitor

#: The checkpoint key holding the segments (a list of :meth:`TrainSegment.to_dict`).
SEGMENTS_KEY = "training_segments"


@dataclass(frozen=True)
class TrainSegment:
    """One fit of a run: from ``start_step`` (0, or the step it resumed from) to ``end_step``.

    ``seconds``/``peak_memory_gb``/``final_loss`` are ``None`` when unknown (a checkpoint
    written before segments were recorded stands for one segment of unknown facts).
    """

    start_step: int
    end_step: int
    seconds: float | None
    peak_memory_gb: float | None
    memory_source: str | None
    final_loss: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainSegment:
        def number(name: str) -> float | None:
            value = values.get(name)
            return None if value is None else float(value)

        source = values.get("memory_source")
        return cls(start_step=int(values["start_step"]), end_step=int(values["end_step"]),
                   seconds=number("seconds"), peak_memory_gb=number("peak_memory_gb"),
                   memory_source=None if source is None else str(source),
                   final_loss=number("final_loss"))


@dataclass(frozen=True)
class TrainingHistory:
    """The whole training of a run, from its segments (oldest first)."""

    segments: tuple[TrainSegment, ...]

    @property
    def seconds(self) -> float | None:
        """Training time summed over the segments (``None`` if one is unknown)."""
        times = [s.seconds for s in self.segments]
        return None if not times or None in times else float(sum(times))  # type: ignore[arg-type]

    @property
    def memory_source(self) -> str | None:
        return self.segments[-1].memory_source if self.segments else None

    @property
    def peak_memory_gb(self) -> float | None:
        """The highest peak of the segments read like the last one (a CUDA peak and a CPU RSS
        do not compare)."""
        peaks = [s.peak_memory_gb for s in self.segments
                 if s.peak_memory_gb is not None and s.memory_source == self.memory_source]
        return max(peaks) if peaks else None

    @property
    def final_loss(self) -> float | None:
        return self.segments[-1].final_loss if self.segments else None

    @property
    def resumed_from_step(self) -> int | None:
        """The step the last segment resumed from; ``None`` when the run trained in one go."""
        start = self.segments[-1].start_step if self.segments else 0
        return start or None


def segments_in(checkpoint: Mapping[str, Any]) -> list[TrainSegment]:
    """The segments a checkpoint dict holds; one of unknown facts for a checkpoint of ours
    written before segments were recorded, none for a checkpoint at step 0."""
    stored = checkpoint.get(SEGMENTS_KEY)
    if isinstance(stored, Sequence):
        return [TrainSegment.from_dict(s) for s in stored if isinstance(s, Mapping)]
    step = int(checkpoint.get("global_step", 0))
    return [TrainSegment(0, step, None, None, None, None)] if step else []


class SegmentLog(L.Callback):
    """Keeps the run's segments in every checkpoint and gives them to the fit's outcome.

    ``memory`` is the fit's :class:`PeakMemoryMonitor` (the segment's peak is read through it).
    """

    def __init__(self, memory: PeakMemoryMonitor) -> None:
        self.memory = memory
        self.previous: list[TrainSegment] = []
        self._start: tuple[int, float] | None = None
        self._ended: TrainSegment | None = None
        self._saved: TrainSegment | None = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.previous = segments_in(checkpoint)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._ended, self._saved = (trainer.global_step, time.perf_counter()), None, None

    def _current(self, trainer: L.Trainer, pl_module: L.LightningModule) -> TrainSegment | None:
        if self._ended is not None:
            return self._ended
        if self._start is None:
            return None  # this fit trained nothing (it resumed a finished run)
        start_step, start_time = self._start
        loss = trainer.callback_metrics.get("train/loss")
        return TrainSegment(
            start_step=start_step,
            end_step=trainer.global_step,
            seconds=time.perf_counter() - start_time,
            peak_memory_gb=self.memory.read(pl_module),
            memory_source=self.memory.source,
            final_loss=None if loss is None else float(loss),
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Frozen here, as the checkpoint of the last step holds it (when one was written at that
        # step already; else the one written after this hook does): it and the outcome agree.
        saved = self._saved
        last_saved = saved is not None and saved.end_step == trainer.global_step
        self._ended = saved if last_saved else self._current(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._saved = self._current(trainer, pl_module)
        checkpoint[SEGMENTS_KEY] = [s.to_dict() for s in self._with(self._saved)]

    def segments(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[TrainSegment, ...]:
        """The segments so far: those restored from the resumed checkpoint, then this fit's if
        it trained a step."""
        return self._with(self._current(trainer, pl_module))

    def _with(self, current: TrainSegment | None) -> tuple[TrainSegment, ...]:
        if current is None or current.end_step == current.start_step:
            return tuple(self.previous)
        return (*self.previous, current)
