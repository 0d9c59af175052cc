"""The table's measuring protocol (loveda_utils/benchmark/measure.py, DESIGN section 3) and its
units: fps statistics from a scripted clock, FLOPs of a model whose count is known by hand,
parameters in millions, memory in GiB (peak RSS and the CUDA allocator's peak, both mocked).

Nothing here times anything real: the clock is scripted, so every expected value is exact.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from loveda_utils import runtime
from loveda_utils.benchmark import measure
from loveda_utils.benchmark.measure import count_gflops, count_params, measure_fps
from loveda_utils.training.callbacks import PeakMemoryMonitor

# --------------------------------------------------------------------------------------------
# fps: median and interquartile range over the timed images, warm-up excluded
# --------------------------------------------------------------------------------------------


class ScriptedClock:
    """``time.perf_counter`` for measure.py: time moves only when the model runs.

    Every clock read, forward pass and synchronisation is logged in order, so a test can check
    where the clock was read relative to the work and the synchronisations.
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self.events: list[str] = []
        self.synced: list[torch.device] = []

    def perf_counter(self) -> float:
        self.events.append("clock")
        return self.now

    def synchronize(self, device: torch.device | str) -> None:
        self.events.append("sync")
        self.synced.append(torch.device(device))


class ScriptedModel(nn.Module):
    """Each forward pass takes the next scripted duration (in seconds of the scripted clock)."""

    def __init__(self, clock: ScriptedClock, durations: list[float]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.clock = clock
        self.durations = list(durations)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.clock.events.append("forward")
        self.clock.now += self.durations.pop(0)
        b, _, h, w = images.shape
        return torch.zeros(b, 2, h, w)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ScriptedClock:
    scripted = ScriptedClock()
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=scripted.perf_counter))
    monkeypatch.setattr(measure, "synchronize", scripted.synchronize)
    return scripted


#: Two warm-up passes far slower than any timed one: counted, they would move every statistic.
WARMUP = [64.0, 64.0]
#: Per-image seconds of the timed passes (binary fractions: the sums are exact), out of order.
TIMED = [1.0, 0.125, 2.0, 0.25, 0.5]


def test_fps_is_the_median_over_timed_images_and_spread_their_iqr(clock: ScriptedClock) -> None:
    model = ScriptedModel(clock, WARMUP + TIMED)
    speed = measure_fps(model, size=8, n_images=len(TIMED), warmup=len(WARMUP), device="cpu")
    assert model.durations == []  # exactly warm-up + timed passes ran
    # Median per-image time 0.5 s -> 2 fps (per-image fps 8, 4, 2, 1, 0.5: the median is 2).
    assert speed.fps == pytest.approx(2.0, rel=1e-12)
    # Interquartile range of the per-image fps [0.5, 1, 2, 4, 8] (statistics.quantiles'
    # default "exclusive" method, as the module uses): Q1 = 0.75, Q3 = 6.
    assert speed.fps_spread == pytest.approx(5.25, rel=1e-12)
    assert speed.fps_mean == pytest.approx(len(TIMED) / sum(TIMED), rel=1e-12)
    assert (speed.n_images, speed.warmup, speed.size) == (5, 2, 8)
    assert speed.amp is False and speed.channels_last is False


def test_fps_of_one_image_has_no_spread(clock: ScriptedClock) -> None:
    speed = measure_fps(ScriptedModel(clock, [0.25]), size=8, n_images=1, warmup=0, device="cpu")
    assert speed.fps == pytest.approx(4.0, rel=1e-12)
    assert speed.fps_spread == 0.0


def test_every_timed_pass_is_synchronised_before_each_clock_read(clock: ScriptedClock) -> None:
    measure_fps(ScriptedModel(clock, WARMUP + TIMED), size=8, n_images=5, warmup=2, device="cpu")
    events = clock.events
    forwards = [k for k, e in enumerate(events) if e == "forward"]
    assert len(forwards) == len(WARMUP) + len(TIMED)
    for k in forwards:
        # The clock starts after the device is idle, and stops only after it is idle again.
        assert events[k - 2 : k] == ["sync", "clock"], events[k - 2 : k + 3]
        after = events[k + 1 :]
        assert after[0] == "sync", after[:3]
    for k in forwards[len(WARMUP) :]:
        assert events[k + 1 : k + 3] == ["sync", "clock"]  # each timed pass's stop
    assert set(clock.synced) == {torch.device("cpu")}


def test_fps_refuses_zero_images() -> None:
    with pytest.raises(ValueError, match="n_images=0"):
        measure_fps(nn.Conv2d(3, 2, 1), size=8, n_images=0, device="cpu")


# --------------------------------------------------------------------------------------------
# FLOPs and parameters
# --------------------------------------------------------------------------------------------


class PixelwiseNet(nn.Module):
    """uint8 images (the data contract) through a 1x1 conv and a per-pixel Linear, no biases:
    ``3*4 + 4*5`` multiply-adds per pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=1, bias=False)
        self.linear = nn.Linear(4, 5, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv(images.float())
        return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_gflops_count_two_flops_per_multiply_add() -> None:
    size = 16
    multiply_adds = (3 * 4 + 4 * 5) * size * size
    assert count_gflops(PixelwiseNet(), size=size, device="cpu") == pytest.approx(
        2 * multiply_adds / 1e9, rel=1e-12
    )


def test_gflops_scale_with_the_pixels_of_the_input() -> None:
    small, large = (count_gflops(PixelwiseNet(), size=s, device="cpu") for s in (8, 32))
    assert large == pytest.approx(16 * small, rel=1e-12)


def test_params_are_in_millions_trainable_or_frozen_buffers_not() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, kernel_size=1), nn.BatchNorm2d(4), nn.Linear(10, 100))
    model[2].requires_grad_(False)  # a frozen layer is still part of the model
    # conv 3*4 + 4, BatchNorm weight + bias 2*4 (its running statistics are buffers), linear
    # 10*100 + 100.
    assert count_params(model) == pytest.approx((16 + 8 + 1100) / 1e6, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Memory: GiB, from peak RSS (KiB on Linux, bytes on macOS) or the CUDA allocator's peak
# --------------------------------------------------------------------------------------------


def test_gb_is_a_gibibyte() -> None:
    assert runtime.GB == 1024**3 == 1_073_741_824


def _fake_rusage(monkeypatch: pytest.MonkeyPatch, platform: str, ru_maxrss: int) -> None:
    monkeypatch.setattr(runtime, "sys", SimpleNamespace(platform=platform))
    usage = SimpleNamespace(ru_maxrss=ru_maxrss)
    monkeypatch.setattr(
        runtime,
        "resource",
        SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: usage if who == 0 else None),
    )


def test_peak_rss_is_kib_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_rusage(monkeypatch, "linux", ru_maxrss=3 * 1024**2 + 512 * 1024)  # KiB
    assert runtime.peak_rss_gb() == 3.5


def test_peak_rss_is_bytes_on_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_rusage(monkeypatch, "darwin", ru_maxrss=3 * 1024**3 + 512 * 1024**2)  # bytes
    assert runtime.peak_rss_gb() == 3.5


def test_training_memory_on_cuda_is_the_allocator_peak_in_gib(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device = torch.device("cuda", 1)
    calls: list[tuple[str, torch.device]] = []

    def reset(where: torch.device) -> None:
        calls.append(("reset", where))

    def peak(where: torch.device) -> int:
        calls.append(("peak", where))
        return 5 * 1024**3 // 4

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", peak)
    monitor, module = PeakMemoryMonitor(), SimpleNamespace(device=device)
    monitor.on_train_start(None, module)  # type: ignore[arg-type]
    monitor.on_train_end(None, module)  # type: ignore[arg-type]
    assert monitor.peak_gb == 1.25
    assert monitor.source == "torch.cuda.max_memory_allocated"
    assert calls == [("reset", device), ("peak", device)]  # peak since training started


def test_training_memory_without_cuda_is_the_peak_rss(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_rusage(monkeypatch, "linux", ru_maxrss=2 * 1024**2)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: pytest.fail("CUDA read"))
    monitor, module = PeakMemoryMonitor(), SimpleNamespace(device=torch.device("cpu"))
    monitor.on_train_end(None, module)  # type: ignore[arg-type]
    assert monitor.peak_gb == 2.0
    assert monitor.source == "peak RSS"
