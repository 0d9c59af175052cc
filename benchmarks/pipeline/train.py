"""Section 4: training steps of :class:`~loveda_utils.training.task.SegmentationTask` in our
Trainer (:func:`~loveda_utils.training.task.build_trainer`) against a plain PyTorch loop doing
the same steps."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from loveda_utils.data.dataset import LoveDASegmentation
from loveda_utils.data.transforms import train_transforms
from loveda_utils.errors import ConfigError
from loveda_utils.runtime import synchronize

from .report import Ratio, Report, Row, progress
from .settings import Settings, lightning_accelerator, quiet_lightning
from .tiles import Tiles, TileStore
from .timing import interleave, paired_ratio


def _train_batches(
    tiles: Tiles, crop: int, batch: int, steps: int
) -> list[dict[str, torch.Tensor]]:
    """``steps`` batches of random training crops, made once so both paths get the same ones."""
    dataset = LoveDASegmentation(tiles.root, "val", tiles.scenes, train_transforms(crop))
    torch.manual_seed(0)
    samples = [dataset[i % len(dataset)] for i in range(steps * batch)]
    return [{"image": s["image"], "mask": s["mask"]} for s in samples]


def measure_train(
    report: Report, store: TileStore, args: argparse.Namespace, settings: Settings, work: Path
) -> None:
    """Section 4: seconds of the same training steps in our Trainer and in a plain loop."""
    import lightning as L
    from torch.utils.data import DataLoader

    from loveda_utils.runtime import precision_dtype, training_precision
    from loveda_utils.training.recipe import checkpoint_interval, get_recipe
    from loveda_utils.training.task import SegmentationTask, poly_factor
    from loveda_utils.training.trainer import build_trainer

    name, steps, warm = args.train_model, args.train_steps, args.train_warmup
    if steps <= warm:
        raise ConfigError(f"--train-steps {steps} must exceed --train-warmup {warm}")
    size = min(args.size)
    mmseg = get_recipe("mmseg")
    crop = args.train_crop or min(mmseg.crop_size, size)
    tiles = store.get(size, min(8, steps * args.train_batch))
    samples = _train_batches(tiles, crop, args.train_batch, steps)
    loader = DataLoader(samples, batch_size=args.train_batch, shuffle=False, num_workers=0)
    accelerator, devices = lightning_accelerator(settings.device)
    # The mmseg recipe over these steps, in the precision the runtime policy trains in.
    precision = training_precision(accelerator)
    recipe = mmseg.replace(
        max_steps=steps, pretrained="none", crop_size=crop, batch_size=args.train_batch,
        precision=precision,
    )

    def new_task() -> SegmentationTask:
        torch.manual_seed(0)  # identical initial weights in both paths
        return SegmentationTask.from_recipe(name, recipe, channels_last=settings.channels_last)

    losses: dict[str, float] = {}

    class StepTimer(L.Callback):
        """Time from the start of step ``warm`` to the end of the last step."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == warm:
                synchronize(pl_module.device)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == steps - 1:
                synchronize(pl_module.device)
                self.seconds = time.perf_counter() - self.start
                losses["lightning"] = float(outputs["loss"])

    runs = 0

    def lightning() -> float:
        nonlocal runs
        runs += 1
        task, timer = new_task(), StepTimer()
        with quiet_lightning():
            trainer = build_trainer(
                work / f"train-{runs}",
                recipe,
                accelerator=accelerator,
                devices=devices,
                # A full mmseg run writes last.ckpt every checkpoint_interval(80k) steps; these
                # few steps' own interval would write it after every step (a short run's
                # safeguard), which the plain loop does not do and a real run amortises.
                checkpoint_every=checkpoint_interval(mmseg.max_steps),
                progress=False,
                extra_callbacks=[timer],
            )
            torch.manual_seed(1)
            trainer.fit(task, train_dataloaders=loader)
        return timer.seconds

    def plain() -> float:
        task = new_task()
        model = task.model.to(settings.device).train()
        hp = task.hparams
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: poly_factor(s, steps, hp.poly_power, hp.lr, min(hp.min_lr, hp.lr))
        )
        amp = precision_dtype(precision)
        scaler = torch.amp.GradScaler(enabled=amp == torch.float16)
        torch.manual_seed(1)
        start = time.perf_counter()
        for i, batch in enumerate(loader):
            if i == warm:
                synchronize(settings.device)
                start = time.perf_counter()
            images = batch["image"].to(settings.device, non_blocking=True)
            if settings.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            mask = batch["mask"].to(settings.device, non_blocking=True)
            context = (
                torch.autocast(settings.device.type, dtype=amp) if amp else contextlib.nullcontext()
            )
            with context:
                logits, aux = model.forward_train(images)
                loss = task.loss(logits, aux, mask)["loss"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        synchronize(settings.device)
        losses["plain"] = float(loss.detach())
        return time.perf_counter() - start

    progress(
        f"training steps, {name}: crop {crop}, batch {args.train_batch}, {steps} steps "
        f"({warm} untimed), precision {precision}"
    )
    times = interleave(
        {"ours: SegmentationTask + Trainer": lightning, "plain PyTorch loop": plain},
        settings.rounds,
    )
    report.facts.append(
        _lightning_overhead(
            lightning,
            steps,
            statistics.median(times["ours: SegmentationTask + Trainer"]) / (steps - warm),
        )
    )
    timed = steps - warm
    note = (
        f"crop {crop}, batch {args.train_batch}, {precision}; final loss "
        f"lightning {losses['lightning']:.5f} plain {losses['plain']:.5f}"
    )
    for path, seconds in times.items():
        report.add(Row("train", name, crop, path, seconds, timed, "step", note))
    ours_t, plain_t = times.values()
    value, detail = paired_ratio(plain_t, ours_t)
    report.ratios.append(
        Ratio(
            "lightning/plain steps",
            f"{name} crop {crop} batch {args.train_batch}",
            value,
            "lightning/plain",
            f"{detail}; {timed} timed steps per run",
        )
    )


def _lightning_overhead(fit: Callable[[], float], steps: int, step_seconds: float) -> str:
    """Lightning's own Python time per step, from one more fit under ``cProfile``.

    Unlike the timed ratio this does not depend on how the shared host drifts: it sums the
    time spent in the lightning package's own code (not in torch ops it calls) over the fit.
    """
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    fit()
    profiler.disable()
    own = sum(
        stat[2]  # tottime: time in the function itself
        for (filename, _, _), stat in pstats.Stats(profiler).stats.items()  # type: ignore[attr-defined]
        if f"{os.sep}lightning{os.sep}" in filename
    )
    per_step = own / steps
    return (
        f"train: Lightning's own Python code took {1000 * per_step:.2f} ms per step in a "
        f"profiled fit (setup and teardown included), {100 * per_step / step_seconds:.2f}% of "
        f"a {1000 * step_seconds:.0f} ms step"
    )
