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
from loveda_utils.evaluation.loop import evaluate
from loveda_utils.evaluation.metrics import ConfusionMatrix
from loveda_utils.training.checkpoint import last_checkpoint, load_checkpoint
from loveda_utils.training.recipe import MMSEG, QUICK
from loveda_utils.training.task import SegmentationTask, poly_factor
from loveda_utils.training.trainer import build_datamodule, fit

pytestmark = pytest.mark.slow

#: Small and quick on a CPU, and a real registry entry.
MODEL = "unet_resnet18"
STEPS = 30
#: The quick recipe at test size.
RECIPE = QUICK.replace(lr=2e-3, batch_size=4, crop_size=48, max_steps=STEPS)


def _datamodule(root: Path, seed: int = 0) -> LoveDADataModule:
    return build_datamodule(RECIPE, root, num_workers=0, seed=seed)


def _train(root: Path, run_dir: Path, steps: int = STEPS, seed: int = 0) -> tuple[SegmentationTask, L.Trainer]:
    L.seed_everything(seed, workers=True, verbose=False)
    outcome = fit(RECIPE.replace(max_steps=steps), _datamodule(root, seed), run_dir, model=MODEL,
                  progress=False, log_every_n_steps=1)
    assert outcome.trainer is not None
    return outcome.task, outcome.trainer


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
    assert task.hparams.lr == MMSEG.lr and task.hparams.min_lr == MMSEG.min_lr  # the recipe's
    opt = task.configure_optimizers()
    sgd, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    assert isinstance(sgd, torch.optim.SGD) and opt["lr_scheduler"]["interval"] == "step"
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 5e-4
    for _ in range(10):
        sgd.step()
        scheduler.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_layer_decay_gives_each_layer_its_own_poly_schedule() -> None:
    """MMSeg's MAE fine-tuning (AdamW, layer decay 0.65): the groups are the network's own, and
    each decays by the poly rule from its own learning rate."""
    task = SegmentationTask(model="upernet_vit_b16_dofa", pretrained="none", optimizer="adamw",
                            lr=1e-4, weight_decay=0.05, min_lr=0.0, layer_decay=0.65, max_steps=10)
    opt = task.configure_optimizers()
    adamw, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    expected = task.model.param_groups(1e-4, 0.65, 0.05)
    assert len(adamw.param_groups) == len(expected) > 2
    for group, want in zip(adamw.param_groups, expected):
        assert group["name"] == want["name"] and group["weight_decay"] == want["weight_decay"]
        assert group["lr"] == pytest.approx(want["lr"])
        assert [id(p) for p in group["params"]] == [id(p) for p in want["params"]]
    assert {g["lr"] for g in adamw.param_groups} > {1e-4}  # the head's, and smaller ones
    for _ in range(5):
        adamw.step()
        scheduler.step()
    for group, want in zip(adamw.param_groups, expected):  # half-way: (1 - 0.5) ** 0.9
        assert group["lr"] == pytest.approx(want["lr"] * 0.5**0.9)
    # Models without layers refuse it when the task is made, naming the model.
    with pytest.raises(ConfigError, match="'unet_resnet18'.*decay=1"):
        SegmentationTask(model=MODEL, pretrained="none", layer_decay=0.65)
    with pytest.raises(ConfigError, match=r"layer_decay=0: must be in \(0, 1\]"):
        SegmentationTask(model=MODEL, pretrained="none", layer_decay=0)


def test_fit_with_layer_decay(mini_loveda: Path, tmp_path: Path) -> None:
    """A recipe's layer_decay reaches the optimizer Lightning steps."""
    recipe = RECIPE.replace(max_steps=2, batch_size=2, crop_size=32, layer_decay=0.8)
    outcome = fit(recipe, build_datamodule(recipe, mini_loveda, num_workers=0), tmp_path / "f",
                  model="upernet_swin_v2_t_satlas_s2", progress=False)
    assert outcome.steps == 2 and outcome.trainer is not None
    groups = outcome.trainer.optimizers[0].param_groups
    scales = {g["name"]: g["lr_scale"] for g in groups}
    assert scales["layer_13_decay"] == 1 and scales["layer_0_decay"] == pytest.approx(0.8**13)
    assert outcome.task.hparams.layer_decay == 0.8


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="optimizer='adam'"):
        SegmentationTask(model=MODEL, pretrained="none", optimizer="adam")
    with pytest.raises(ConfigError, match="max_steps=0"):
        SegmentationTask(model=MODEL, pretrained="none", max_steps=0)


def test_missing_and_corrupt_checkpoints(tmp_path: Path, trained) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt.ckpt is unreadable or corrupt"):
        load_checkpoint(corrupt)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="not a SegmentationTask checkpoint"):
        load_checkpoint(other)
    _, _, run_dir = trained
    good = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    good["hyper_parameters"]["model"] = "fcn_resnet50"
    mismatched = tmp_path / "mismatch.ckpt"
    torch.save(good, mismatched)
    with pytest.raises(CheckpointError, match="does not fit model 'fcn_resnet50'"):
        load_checkpoint(mismatched)
    loaded = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert loaded.task.hparams.model == MODEL and loaded.global_step == STEPS
    assert (loaded.crop_size, loaded.batch_size) == (RECIPE.crop_size, RECIPE.batch_size)


def test_fit_reports_its_outcome(mini_loveda: Path, tmp_path: Path) -> None:
    recipe = RECIPE.replace(max_steps=2, batch_size=2)
    outcome = fit(recipe, build_datamodule(recipe, mini_loveda, num_workers=0), tmp_path / "f",
                  model=MODEL, progress=False)
    assert outcome.steps == 2 and outcome.checkpoint == last_checkpoint(tmp_path / "f") is not None
    assert outcome.resumed_from is None and outcome.seconds > 0 and outcome.precision == "32-true"
    assert outcome.peak_memory_gb > 0 and outcome.memory_source == "peak RSS"
    assert outcome.final_loss is not None and outcome.task.hparams.optimizer == recipe.optimizer
    # The Trainer stops at max_steps while the task keeps the recipe's schedule (estimate).
    short = fit(RECIPE, build_datamodule(recipe, mini_loveda, num_workers=0), tmp_path / "g",
                model=MODEL, max_steps=1, progress=False)
    assert short.steps == 1 and short.task.hparams.max_steps == RECIPE.max_steps


def test_ddp_fit_with_two_cpu_processes(mini_loveda: Path, tmp_path: Path) -> None:
    """Lightning's own DDP (gloo on CPU): two processes, one synchronised model."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(
        "import sys, torch\n"
        "from loveda_utils.training.recipe import QUICK\n"
        "from loveda_utils.training.trainer import build_datamodule, fit\n"
        "recipe = QUICK.replace(max_steps=3, batch_size=2, crop_size=48)\n"
        "dm = build_datamodule(recipe, sys.argv[1], num_workers=0)\n"
        "out = fit(recipe, dm, sys.argv[2], model='lraspp_mobilenet_v3_large', accelerator='cpu',\n"
        "          devices=2, strategy='ddp', progress=False)\n"
        "task, trainer = out.task, out.trainer\n"
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
