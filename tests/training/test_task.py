"""Lightning training: it learns, it is reproducible, it resumes, it scales out with DDP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from loveda_utils.data.classes import IGNORE_INDEX, NUM_CLASSES
from loveda_utils.data.datamodule import LoveDADataModule
from loveda_utils.errors import CheckpointError, ConfigError
from loveda_utils.evaluation.inference import evaluate
from loveda_utils.evaluation.metrics import ConfusionMatrix
from loveda_utils.training.task import (
    SegmentationTask,
    build_trainer,
    fit,
    last_checkpoint,
    load_task,
    poly_factor,
)

pytestmark = pytest.mark.slow

#: Small and quick on a CPU, and a real registry entry.
MODEL = "unet_resnet18"
STEPS = 30


def _datamodule(root: Path, seed: int = 0) -> LoveDADataModule:
    return LoveDADataModule(root, batch_size=4, crop_size=48, num_workers=0, seed=seed)


def _train(root: Path, run_dir: Path, steps: int = STEPS, seed: int = 0) -> tuple[SegmentationTask, L.Trainer]:
    L.seed_everything(seed, workers=True, verbose=False)
    task = SegmentationTask(model=MODEL, pretrained="none", optimizer="adamw", lr=2e-3,
                            weight_decay=1e-4, max_steps=steps)
    trainer = build_trainer(run_dir, max_steps=steps, progress=False, log_every_n_steps=1)
    trainer.fit(task, datamodule=_datamodule(root, seed), ckpt_path=last_checkpoint(run_dir))
    return task, trainer


def _losses(run_dir: Path) -> list[float]:
    import pandas as pd

    versions = sorted((run_dir / "logs").glob("version_*/metrics.csv"))
    return [v for f in versions for v in pd.read_csv(f)["train/loss"].dropna().tolist()]


def _chance_miou(root: Path) -> float:
    """mIoU of predicting every pixel by drawing from the training class prior: chance level."""
    dm = _datamodule(root)
    dm.setup("validate")
    rng = torch.Generator().manual_seed(0)
    prior = torch.full((NUM_CLASSES,), 1.0 / NUM_CLASSES)
    cm = ConfusionMatrix()
    for batch in dm.val_dataloader():
        pred = torch.multinomial(prior, batch["mask"].numel(), replacement=True, generator=rng)
        cm.update(pred.view(batch["mask"].shape), batch["mask"])
    return cm.compute().miou


@pytest.fixture(scope="module")
def trained(mini_loveda: Path, tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("run")
    task, trainer = _train(mini_loveda, run_dir)
    return task, trainer, run_dir


def test_training_lowers_loss_and_beats_chance(trained, mini_loveda: Path) -> None:
    task, trainer, run_dir = trained
    assert trainer.global_step == STEPS
    losses = _losses(run_dir)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    dm = _datamodule(mini_loveda)
    dm.setup("validate")
    miou = evaluate(task.model, dm.val_dataloader()).scores.miou
    assert miou > 1.5 * _chance_miou(mini_loveda), miou


def test_logs_and_checkpoint(trained) -> None:
    _, _, run_dir = trained
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "logs" / "version_0" / "metrics.csv").is_file()
    assert list((run_dir / "logs" / "version_0").glob("events.out.tfevents.*")), "TensorBoard log missing"
    logged = _losses(run_dir)
    assert len(logged) == STEPS


def test_same_seed_same_metrics(trained, mini_loveda: Path, tmp_path: Path) -> None:
    task, _, _ = trained
    again, _ = _train(mini_loveda, tmp_path / "again")
    dm = _datamodule(mini_loveda)
    dm.setup("validate")
    a = evaluate(task.model, dm.val_dataloader())
    b = evaluate(again.model, dm.val_dataloader())
    assert torch.equal(a.confusion, b.confusion)


def test_resume_continues_where_it_stopped(mini_loveda: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "resume"
    _, first = _train(mini_loveda, run_dir, steps=4)
    assert first.global_step == 4
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    # Same run folder, longer schedule: continues from step 4 instead of starting over.
    task, second = _train(mini_loveda, run_dir, steps=6)
    assert second.global_step == 6
    assert len(_losses(run_dir)) == 6  # 4 logged before, 2 after: no step repeated
    lr = second.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(2e-3 * poly_factor(6, 6, 0.9, 2e-3, 1e-4))


def test_aux_head_trains_and_is_dropped_in_inference(mini_loveda: Path) -> None:
    task = SegmentationTask(model="fcn_resnet50", pretrained="none", max_steps=1)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    mask = torch.randint(0, NUM_CLASSES, (2, 64, 64), dtype=torch.uint8)
    mask[:, :4] = IGNORE_INDEX
    logits, aux = task.model.forward_train(images)
    assert aux is not None and aux.shape == logits.shape == (2, NUM_CLASSES, 64, 64)
    losses = task.loss(logits, aux, mask)
    assert torch.allclose(losses["loss"], losses["loss_main"] + 0.4 * losses["loss_aux"])
    assert task(images).shape == (2, NUM_CLASSES, 64, 64)


def test_poly_schedule_matches_mmseg() -> None:
    # MMSeg PolyLR(eta_min=1e-4, power=0.9): lr = (0.01 - 1e-4) * (1 - t/T)^0.9 + 1e-4
    for t in (0, 1000, 40_000, 79_999, 80_000):
        expected = (0.01 - 1e-4) * (1 - t / 80_000) ** 0.9 + 1e-4
        assert 0.01 * poly_factor(t, 80_000, 0.9, 0.01, 1e-4) == pytest.approx(expected)
    task = SegmentationTask(model=MODEL, pretrained="none", max_steps=10)
    opt = task.configure_optimizers()
    sgd, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    assert isinstance(sgd, torch.optim.SGD) and opt["lr_scheduler"]["interval"] == "step"
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 5e-4
    for _ in range(10):
        sgd.step()
        scheduler.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="optimizer='adam'"):
        SegmentationTask(model=MODEL, pretrained="none", optimizer="adam")
    with pytest.raises(ConfigError, match="max_steps=0"):
        SegmentationTask(model=MODEL, pretrained="none", max_steps=0)


def test_missing_and_corrupt_checkpoints(tmp_path: Path, trained) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_task(tmp_path / "nope.ckpt")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt.ckpt is unreadable or corrupt"):
        load_task(corrupt)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="not a SegmentationTask checkpoint"):
        load_task(other)
    _, _, run_dir = trained
    good = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    good["hyper_parameters"]["model"] = "fcn_resnet50"
    mismatched = tmp_path / "mismatch.ckpt"
    torch.save(good, mismatched)
    with pytest.raises(CheckpointError, match="does not fit model 'fcn_resnet50'"):
        load_task(mismatched)
    loaded = load_task(run_dir / "checkpoints" / "last.ckpt")
    assert loaded.hparams.model == MODEL


def test_fit_helper(mini_loveda: Path, tmp_path: Path) -> None:
    task, trainer = fit(MODEL, tmp_path / "f", data_root=mini_loveda, max_steps=2, batch_size=2,
                        crop_size=48, pretrained="none", num_workers=0, progress=False)
    assert trainer.global_step == 2 and last_checkpoint(tmp_path / "f") is not None


def test_ddp_fit_with_two_cpu_processes(mini_loveda: Path, tmp_path: Path) -> None:
    """Lightning's own DDP (gloo on CPU): two processes, one synchronised model."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(
        "import sys, torch\n"
        "from loveda_utils.training.task import fit\n"
        "task, trainer = fit('lraspp_mobilenet_v3_large', sys.argv[2], data_root=sys.argv[1], max_steps=3,\n"
        "                    batch_size=2, crop_size=48, pretrained='none', accelerator='cpu', devices=2,\n"
        "                    strategy='ddp', num_workers=0, progress=False)\n"
        "w = torch.cat([p.detach().flatten() for p in task.parameters()])\n"
        "gathered = trainer.strategy.all_gather(w)\n"
        "if trainer.global_rank == 0:\n"
        "    same = bool(torch.equal(gathered[0], gathered[1]))\n"
        "    print(f'world_size={trainer.world_size} step={trainer.global_step} same_weights={same}')\n"
    )
    done = subprocess.run([sys.executable, str(script), str(mini_loveda), str(tmp_path / "ddp")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world_size=2 step=3 same_weights=True" in done.stdout, done.stdout + done.stderr[-2000:]
