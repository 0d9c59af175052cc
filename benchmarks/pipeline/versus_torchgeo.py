"""Section 3: torchgeo's own path (its ``LoveDADataModule`` and ``SemanticSegmentation`` task
through Lightning's ``Trainer.validate``) against ours, on the same smp UNet weights, tiles and
workers. Both paths are scored the same MMSeg way and must agree exactly."""

from __future__ import annotations

import argparse
import copy
import gc
import time
from functools import partial
from typing import Any

import torch
from torch import nn

from loveda_utils.data.classes import NUM_CLASSES, raw_to_train
from loveda_utils.errors import ConfigError
from loveda_utils.evaluation.metrics import ConfusionMatrix
from loveda_utils.models.registry import get_spec
from loveda_utils.runtime import synchronize

from .ceiling import ours_seconds, run_ours, tile_count, time_ceiling
from .report import Ratio, Report, Row, progress
from .settings import (
    Settings,
    lightning_accelerator,
    lightning_precision,
    loaded_batches,
    quiet_lightning,
    random_model,
)
from .tiles import Tiles, TileStore
from .timing import interleave, paired_ratio, timed


def torchgeo_task(ours: nn.Module) -> nn.Module:
    """torchgeo's ``SemanticSegmentation`` UNet holding exactly ``ours``'s weights.

    torchgeo's LoveDA masks keep the raw values (0 = no-data), so its task has 8 classes and
    ignores 0. Our 7 class channels go to its channels 1..7; channel 0 gets zero weights and a
    bias of -1e4, so it never wins the argmax and both models predict the same labels.
    """
    from torchgeo.tasks import SemanticSegmentation

    spec = ours.spec  # type: ignore[union-attr]
    task = SemanticSegmentation(
        model="unet",
        backbone=spec.encoder,
        weights=None,
        in_channels=3,
        num_classes=NUM_CLASSES + 1,
        ignore_index=0,
    )
    state = {k: v.detach().clone() for k, v in ours.net.state_dict().items()}  # type: ignore[union-attr]
    theirs = task.model.state_dict()
    for key in ("segmentation_head.0.weight", "segmentation_head.0.bias"):
        head = torch.zeros_like(theirs[key])
        head[1:] = state[key]
        if key.endswith("bias"):
            head[0] = -1e4
        state[key] = head
    task.model.load_state_dict(state)
    return task


def check_torchgeo_model(name: str) -> None:
    """Refuse a ``--torchgeo-model`` that torchgeo's task cannot build identically."""
    spec = get_spec(name)
    if spec.family != "smp" or spec.arch != "Unet" or spec.arch_kwargs:
        raise ConfigError(
            f"--torchgeo-model {name}: torchgeo's SemanticSegmentation builds the same network "
            "only for our plain smp UNets (unet_resnet18, unet_resnet50)"
        )


class Scorer:
    """Collects torchgeo's predictions (a forward hook) and scores them with our metrics."""

    def __init__(self) -> None:
        import lightning as L

        self.confusion = ConfusionMatrix(NUM_CLASSES)
        self.logits: torch.Tensor | None = None
        scorer = self

        class Callback(L.Callback):
            def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
                labels = scorer.logits.argmax(dim=1) - 1  # their class 1..7 is our 0..6
                scorer.confusion.update(labels, raw_to_train(batch["mask"]))

        self.callback = Callback()

    def hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.logits = output.detach()


def agreement(ours: torch.Tensor, theirs: Any) -> str:
    """How two confusion matrices of the same pixels compare (identical, or by how much not)."""
    theirs = theirs.matrix.cpu()
    if torch.equal(ours, theirs):
        return "identical confusion matrices"
    # A pixel predicted differently moves one count from one cell of its row to another
    # (swaps within a row cancel, hence "at least").
    moved = int((ours - theirs).abs().sum()) // 2
    return (
        f"confusion matrices differ: at least {moved} of {int(ours.sum())} pixels predicted "
        "differently; NCHW and channels-last convolutions round differently, flipping "
        "near-tied argmaxes"
    )


def run_torchgeo(
    task: nn.Module, tiles: Tiles, settings: Settings, scorer: Scorer | None = None
) -> float:
    """Seconds of torchgeo's path: its datamodule and ``Trainer.validate``, built per run."""
    import lightning as L
    from torchgeo.datamodules import LoveDADataModule as TorchGeoLoveDA

    accelerator, devices = lightning_accelerator(settings.device)
    handle = task.model.register_forward_hook(scorer.hook) if scorer else None
    try:
        with quiet_lightning():
            start = time.perf_counter()
            datamodule = TorchGeoLoveDA(
                batch_size=settings.batch_size,
                num_workers=settings.workers,
                root=str(tiles.root),
                scene=[s.lower() for s in tiles.scenes],
            )
            trainer = L.Trainer(
                accelerator=accelerator,
                devices=devices,
                precision=lightning_precision(settings),
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                inference_mode=True,
                callbacks=[scorer.callback] if scorer else [],
                default_root_dir=str(tiles.root.parent / "lightning"),
            )
            trainer.validate(task, datamodule=datamodule, verbose=False)
            synchronize(settings.device)
            seconds = time.perf_counter() - start
    finally:
        if handle is not None:
            handle.remove()
    del trainer, datamodule
    gc.collect()
    return seconds


def measure_torchgeo(
    report: Report, store: TileStore, args: argparse.Namespace, settings: Settings
) -> None:
    """Section 3: ours against torchgeo's path on the same smp UNet, tiles and workers."""
    name = args.torchgeo_model
    check_torchgeo_model(name)
    for size in args.torchgeo_size:
        ours_model = random_model(name, settings)
        # torchgeo's datamodule feeds x / 255 (its mean 0, std 255): ours does the same here,
        # so both networks see identical inputs and must predict identical labels.
        ours_model.set_normalization(torch.zeros(3), torch.full((3,), 255.0), "x/255 (as torchgeo)")
        task = torchgeo_task(ours_model).to(settings.device)
        probe = loaded_batches(store.get(size, 1), settings)[:1]
        time_ceiling(ours_model, probe, settings)
        per_tile = time_ceiling(ours_model, probe, settings) / probe[0].shape[0]
        tiles = store.get(size, tile_count(args, per_tile))
        progress(f"torchgeo vs ours, {name} at {size} px: {tiles.n} tiles from {tiles.source}")

        # Scored (untimed) runs: ours, torchgeo as shipped, torchgeo with a channels-last model.
        _, result = run_ours(ours_model, tiles, settings)
        variants: dict[str, nn.Module] = {"torchgeo (as shipped)": task}
        cl_task = copy.deepcopy(task).to(memory_format=torch.channels_last)
        variants["torchgeo + channels_last model"] = cl_task
        scores: dict[str, Any] = {}
        single: dict[str, float] = {}
        single_bg: dict[str, float | None] = {}
        for label, variant in variants.items():
            scorer = Scorer()
            single[label], single_bg[label] = timed(
                partial(run_torchgeo, variant, tiles, settings, scorer)
            )
            scores[label] = scorer.confusion
        # "Each path at its best settings": the faster torchgeo variant goes into the rounds.
        best = min(single, key=single.get)  # type: ignore[arg-type]
        times = interleave(
            {
                "ours: PNG -> confusion matrix": partial(
                    ours_seconds, ours_model, tiles, settings, []
                ),
                best: partial(run_torchgeo, variants[best], tiles, settings),
            },
            settings.rounds,
        )
        note = f"{tiles.source}; batch {settings.batch_size}; {settings.workers} workers"
        for path, seconds in times.items():
            miou = result.miou if path.startswith("ours") else scores[path].compute().miou
            report.add(
                Row(
                    "torchgeo",
                    name,
                    size,
                    path,
                    seconds,
                    tiles.n,
                    "tile",
                    f"{note}; mIoU {miou:.4f}",
                )
            )
        for label in variants:
            if label != best:
                report.add(
                    Row(
                        "torchgeo",
                        name,
                        size,
                        label,
                        [single[label]],
                        tiles.n,
                        "tile",
                        f"{note}; one run (slower variant); "
                        f"mIoU {scores[label].compute().miou:.4f}",
                        background=single_bg[label],
                    )
                )
        ours_t, theirs_t = times.values()
        miou_text = "; ".join(
            f"mIoU ours {result.miou:.6f} vs {label.removeprefix('torchgeo ')} "
            f"{scores[label].compute().miou:.6f} ({agreement(result.confusion, scores[label])})"
            for label in variants
        )
        report.ratios.append(
            Ratio(
                "ours/torchgeo",
                f"{name} {size}px vs {best.removeprefix('torchgeo ')}",
                paired_ratio(theirs_t, ours_t)[0],
                "ours/torchgeo",
                paired_ratio(theirs_t, ours_t)[1],
            )
        )
        report.facts.append(f"torchgeo {name} {size}px: {miou_text}")
        slow = max(single, key=single.get)  # type: ignore[arg-type]
        report.facts.append(
            f"torchgeo {name} {size}px: ours / {slow} (single run) = "
            f"{single[slow] / min(ours_t):.3f}"
        )
        gc.collect()
