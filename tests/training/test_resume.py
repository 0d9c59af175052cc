"""Interrupted and resumed training (issue #11): ``last.ckpt`` always holds the newest step, an
interrupt saves the steps done, and the outcome of a resumed run states its whole training."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import MODEL, InterruptAt

from loveda_utils.errors import CheckpointError
from loveda_utils.training.callbacks import RunCheckpoint
from loveda_utils.training.recipe import MMSEG, QUICK, checkpoint_interval
from loveda_utils.training.segments import SEGMENTS_KEY, TrainingHistory, TrainSegment
from loveda_utils.training.trainer import build_datamodule, build_trainer, fit

pytestmark = pytest.mark.slow

RECIPE = QUICK.replace(max_steps=3, batch_size=2, crop_size=48)
REPO = Path(__file__).resolve().parents[2]


def _fit(root: Path, run_dir: Path, steps: int, **options):
    recipe = RECIPE.replace(max_steps=steps)
    return fit(recipe, build_datamodule(recipe, root, num_workers=0), run_dir, model=MODEL,
               progress=False, **options)


def _step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["global_step"])


def _segments(path: Path) -> list[dict]:
    return torch.load(path, weights_only=True)[SEGMENTS_KEY]


# -- the checkpoint a record names is the one the run wrote ------------------------------------------


def test_resuming_with_a_new_max_steps_keeps_last_ckpt_current(mini_loveda: Path, tmp_path: Path) -> None:
    """Lightning versioned the name (last-v1.ckpt) when the interval changed with max_steps,
    and resume and the record kept naming the stale last.ckpt."""
    first = _fit(mini_loveda, tmp_path, steps=3)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert first.checkpoint == ckpt and _step(ckpt) == 3
    second = _fit(mini_loveda, tmp_path, steps=6)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    assert second.steps == 6 and second.checkpoint == ckpt and _step(ckpt) == 6
    assert second.resumed_from == ckpt and second.resumed_from_step == 3


def test_the_last_step_is_saved_between_two_intervals(mini_loveda: Path, tmp_path: Path) -> None:
    """ModelCheckpoint wrote last.ckpt at the end only when it had written none in that fit."""
    outcome = _fit(mini_loveda, tmp_path, steps=6, checkpoint_every=4)
    assert outcome.steps == 6 and _step(tmp_path / "checkpoints" / "last.ckpt") == 6


def test_short_schedules_checkpoint_ten_times(tmp_path: Path) -> None:
    assert [checkpoint_interval(n) for n in (80_000, 10_000, 150, 25, 9, 1)] == [1000, 1000, 15, 2, 1, 1]

    def every(recipe, **options) -> int:
        trainer = build_trainer(tmp_path, recipe, progress=False, accelerator="cpu", **options)
        (callback,) = [cb for cb in trainer.callbacks if isinstance(cb, RunCheckpoint)]
        return callback._every_n_train_steps

    assert every(QUICK) == 15 and every(MMSEG) == 1000
    # estimate stops a schedule after a few steps: the interval stays the schedule's.
    assert every(MMSEG, max_steps=6) == 1000


def test_a_checkpoint_past_max_steps_is_refused(mini_loveda: Path, tmp_path: Path) -> None:
    _fit(mini_loveda, tmp_path, steps=3)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=rf"{ckpt} is at step 3, past max_steps=2: resume it "
                       r"with max_steps >= 3, or move it aside"):
        _fit(mini_loveda, tmp_path, steps=2)


def test_a_checkpoint_of_another_model_is_refused(mini_loveda: Path, tmp_path: Path) -> None:
    """Lightning failed inside load_state_dict with hundreds of missing keys."""
    _fit(mini_loveda, tmp_path, steps=2)
    recipe = RECIPE.replace(max_steps=3)
    with pytest.raises(CheckpointError, match=rf"holds model '{MODEL}', not model='unet_resnet18': "
                       rf"resume it with model='{MODEL}', or move it aside"):
        fit(recipe, build_datamodule(recipe, mini_loveda, num_workers=0), tmp_path,
            model="unet_resnet18", progress=False)


# -- a resumed run's outcome keeps its facts -----------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted(mini_loveda: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped by Ctrl-C after 2 of its 5 steps (in this process)."""
    run_dir = tmp_path_factory.mktemp("interrupted")
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match=r"interrupted at step 2; .*last.ckpt holds step 2: "
                       "run again into the same run folder to resume"):
        _fit(mini_loveda, run_dir, steps=5, extra_callbacks=[InterruptAt(2)])
    # Lightning ignores SIGINT while it shuts down and leaves it so: fit restores the handler.
    assert signal.getsignal(signal.SIGINT) is handler
    return run_dir


def test_an_interrupt_saves_the_steps_done(interrupted: Path) -> None:
    ckpt = interrupted / "checkpoints" / "last.ckpt"
    assert _step(ckpt) == 2  # the interval (5 // 10 -> every step) aside: saved on the interrupt
    (segment,) = _segments(ckpt)
    assert segment["start_step"] == 0 and segment["end_step"] == 2 and segment["seconds"] > 0


def test_a_resumed_run_reports_its_whole_training(interrupted: Path, mini_loveda: Path) -> None:
    first = TrainSegment.from_dict(_segments(interrupted / "checkpoints" / "last.ckpt")[0])
    outcome = _fit(mini_loveda, interrupted, steps=5)
    assert outcome.steps == 5 and outcome.resumed_from_step == 2
    assert [(s.start_step, s.end_step) for s in outcome.segments] == [(0, 2), (2, 5)]
    assert outcome.segments[0] == first  # restored from the checkpoint as it was saved
    assert outcome.seconds == pytest.approx(sum(s.seconds for s in outcome.segments))
    assert outcome.seconds > outcome.segments[1].seconds
    assert outcome.peak_memory_gb == max(s.peak_memory_gb for s in outcome.segments)
    assert outcome.final_loss == outcome.segments[1].final_loss is not None
    # The checkpoint the record names holds the same history.
    saved = [TrainSegment.from_dict(s) for s in _segments(outcome.checkpoint)]
    assert tuple(saved) == outcome.segments

    # Resumed once more with nothing left to train (say, evaluation crashed): nothing is lost.
    again = _fit(mini_loveda, interrupted, steps=5)
    assert again.segments == outcome.segments and again.seconds == outcome.seconds
    assert again.final_loss == outcome.final_loss and again.peak_memory_gb == outcome.peak_memory_gb
    assert again.resumed_from_step == 2


def test_a_checkpoint_without_segments_leaves_the_time_unknown(mini_loveda: Path, tmp_path: Path) -> None:
    """A checkpoint written before segments were recorded: its training time is not invented."""
    _fit(mini_loveda, tmp_path, steps=2)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    data = torch.load(ckpt, weights_only=True)
    del data[SEGMENTS_KEY]
    torch.save(data, ckpt)
    outcome = _fit(mini_loveda, tmp_path, steps=3)
    assert [(s.start_step, s.end_step, s.seconds) for s in outcome.segments][0] == (0, 2, None)
    assert outcome.seconds is None and outcome.resumed_from_step == 2 and len(outcome.segments) == 2


def test_history_of_mixed_memory_sources_compares_like_with_like() -> None:
    cpu = TrainSegment(0, 10, 5.0, 9.0, "peak RSS", 1.0)
    gpu = TrainSegment(10, 20, 2.0, 3.0, "torch.cuda.max_memory_allocated", 0.5)
    history = TrainingHistory((cpu, gpu))
    assert history.peak_memory_gb == 3.0 and history.memory_source == gpu.memory_source
    assert history.seconds == 7.0 and history.final_loss == 0.5 and history.resumed_from_step == 10
    assert TrainingHistory((cpu,)).resumed_from_step is None and TrainingHistory(()).seconds is None


# -- a real process stopped by a signal ------------------------------------------------------------

#: ``python -m loveda_utils train`` with a callback that prints each step (to know when to
#: signal), else unchanged.
_TRAIN_PRINTING_STEPS = """
import signal
import sys
import lightning as L
import loveda_utils.training.trainer as trainer
from loveda_utils.cli import main

# Ctrl-C as in a terminal (a shell's background job would inherit SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)

class PrintSteps(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        print(f"\\n@step {trainer.global_step}@", flush=True)  # on its own line, beside the bar

fit = trainer.fit
trainer.fit = lambda *a, **k: fit(*a, extra_callbacks=[PrintSteps()], **k)
sys.exit(main(sys.argv[1:]))
"""


def _train_command(root: Path, run_dir: Path, max_steps: int) -> list[str]:
    return ["train", "--model", MODEL, "--run-dir", str(run_dir), "--data-root", str(root),
            "--recipe", "quick", "--max-steps", str(max_steps), "--batch-size", "2",
            "--crop-size", "48", "--num-workers", "0", "--accelerator", "cpu"]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_the_run_resumes_from_it(
    mini_loveda: Path, tmp_path: Path, signum: int, code: int
) -> None:
    script = tmp_path / "train.py"
    script.write_text(_TRAIN_PRINTING_STEPS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run_dir = tmp_path / "run"
    # 1000 steps: the interval is 100, so any checkpoint before step 100 is the signal's.
    proc = subprocess.Popen([sys.executable, str(script), *_train_command(mini_loveda, run_dir, 1000)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 600
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "@step 3@" or time.monotonic() > deadline:
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == code, err[-3000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    saved = _step(ckpt)
    assert 3 <= saved < 100, out[-500:]
    assert str(ckpt) in err and "the same command resumes" in err
    assert [(s["start_step"], s["end_step"]) for s in _segments(ckpt)] == [(0, saved)]

    # The same command with a nearer end continues from the saved step.
    done = subprocess.run([sys.executable, str(script), *_train_command(mini_loveda, run_dir, saved + 2)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [int(step) for step in re.findall(r"^@step (\d+)@$", done.stdout, re.MULTILINE)]
    assert steps == [saved + 1, saved + 2]
    assert _step(ckpt) == saved + 2
    assert [(s["start_step"], s["end_step"]) for s in _segments(ckpt)] == [(0, saved), (saved, saved + 2)]
