"""The table's measuring protocol (loveda_utils/benchmark/measure.py, DESIGN section 3) and its
units: fps by MMSeg's definition from a scripted clock (timed images / their total time, the
warm-up excluded, normalisation outside the clock, fp32 NCHW with cudnn's autotuner off), the
fast figure's settings, multiply-adds of models whose count is known by hand, parameters in
millions, memory in GiB (peak RSS and the CUDA allocator's peak, both mocked).

Nothing here times anything real: the clock is scripted, so every expected value is exact.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loveda_utils import runtime
from loveda_utils.benchmark import measure
from loveda_utils.benchmark.measure import (
    MMSEG_SETTINGS,
    InferenceSettings,
    count_complexity,
    count_params,
    fast_settings,
    measure_fps,
    measure_fps_fast,
)
from loveda_utils.models import build_model
from loveda_utils.training.callbacks import PeakMemoryMonitor

# --------------------------------------------------------------------------------------------
# fps: MMSeg's definition, timed images over their total time, warm-up excluded
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
    """Each forward pass takes the next scripted duration (in seconds of the scripted clock)
    and notes the state it ran in (cudnn's autotuner, autocast, the input's dtype and layout)."""

    def __init__(self, clock: ScriptedClock, durations: list[float]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.clock = clock
        self.durations = list(durations)
        self.seen: list[tuple[bool, bool, torch.dtype, bool]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.clock.events.append("forward")
        self.clock.now += self.durations.pop(0)
        self.seen.append((
            torch.backends.cudnn.benchmark,
            torch.is_autocast_enabled("cpu"),
            images.dtype,
            images.is_contiguous(memory_format=torch.channels_last),
        ))  # fmt: skip
        b, _, h, w = images.shape
        return torch.zeros(b, 2, h, w)


class ScriptedRegistryModel(ScriptedModel):
    """A model with the registry wrapper's split: ``normalize`` (slow on the scripted clock:
    counted, it would move fps) and ``forward_normalized``."""

    NORMALIZE_SECONDS = 1000.0

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        self.clock.events.append("normalize")
        self.clock.now += self.NORMALIZE_SECONDS
        return images.float() / 255

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)


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


def test_fps_is_the_timed_images_over_their_total_time(clock: ScriptedClock) -> None:
    model = ScriptedModel(clock, WARMUP + TIMED)
    speed = measure_fps(model, size=8, n_images=len(TIMED), warmup=len(WARMUP), device="cpu")
    assert model.durations == []  # exactly warm-up + timed passes ran
    # MMSeg's benchmark.py: (i + 1 - num_warmup) / pure_inf_time = 5 images / 3.875 s.
    assert speed.fps == pytest.approx(5 / 3.875, rel=1e-12)
    # Per-image fps [0.5, 1, 2, 4, 8]: median 2; interquartile range (statistics.quantiles'
    # default "exclusive" method, as the module uses) Q3 - Q1 = 6 - 0.75.
    assert speed.fps_median == pytest.approx(2.0, rel=1e-12)
    assert speed.fps_spread == pytest.approx(5.25, rel=1e-12)
    assert (speed.n_images, speed.warmup, speed.size) == (5, 2, 8)
    assert speed.settings == MMSEG_SETTINGS and speed.amp is False


def test_fps_defaults_are_mmsegs_200_images_the_first_5_untimed(clock: ScriptedClock) -> None:
    model = ScriptedModel(clock, [64.0] * 5 + [0.25] * 195)
    speed = measure_fps(model, size=8, device="cpu")
    assert model.durations == []  # 200 passes in all
    assert (speed.n_images, speed.warmup) == (195, 5)
    assert speed.fps == pytest.approx(4.0, rel=1e-12)  # 195 images in 48.75 s


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
        assert events[k + 1 : k + 3] == ["sync", "clock"], events[k : k + 3]
    assert set(clock.synced) == {torch.device("cpu")}


def test_normalisation_runs_before_the_clock_starts(clock: ScriptedClock) -> None:
    model = ScriptedRegistryModel(clock, WARMUP + TIMED)
    speed = measure_fps(model, size=8, n_images=5, warmup=2, device="cpu")
    # Each pass: normalise, then synchronise and start the clock, run, synchronise, stop.
    per_pass = ["normalize", "sync", "clock", "forward", "sync", "clock"]
    assert clock.events == per_pass * (len(WARMUP) + len(TIMED))
    # 1000 s of normalisation per image are not in the figure.
    assert speed.fps == pytest.approx(5 / 3.875, rel=1e-12)


def test_fps_runs_fp32_nchw_with_cudnn_benchmark_off_then_restores_both(
    clock: ScriptedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    model = ScriptedModel(clock, [0.5] * 3)
    model.conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)  # stored channels-last
    model.train()
    measure_fps(model, size=8, n_images=2, warmup=1, device="cpu")
    # (cudnn.benchmark, autocast, input dtype, input channels-last) during every pass.
    assert model.seen == [(False, False, torch.float32, False)] * 3
    assert torch.backends.cudnn.benchmark is True  # the caller's setting comes back
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.training  # and so do the model's mode and memory format


def test_other_settings_time_under_autocast_and_channels_last(clock: ScriptedClock) -> None:
    model = ScriptedModel(clock, [0.5] * 2)
    settings = InferenceSettings(amp_dtype=torch.bfloat16, channels_last=True, cudnn_benchmark=True)
    speed = measure_fps(model, size=8, n_images=1, warmup=1, device="cpu", settings=settings)
    assert model.seen == [(True, True, torch.float32, True)] * 2
    assert speed.amp is True
    assert speed.settings.to_dict() == {
        "precision": "bf16", "channels_last": True, "cudnn_benchmark": True,
    }  # fmt: skip


def test_fast_settings_are_the_runtime_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CPU: no autocast by default, channels-last (oneDNN); cudnn's autotuner off.
    assert fast_settings("cpu") == InferenceSettings(None, True, False)
    assert fast_settings("cpu", channels_last=False) == InferenceSettings(None, False, False)
    # CUDA: autocast (fp16 where bf16 is not native) and channels-last for the tensor cores.
    # (the runtime reads the device's compute capability, so that no CUDA context is made)
    from loveda_utils import runtime

    monkeypatch.setattr(runtime, "cuda_capability", lambda *args, **kwargs: (7, 0))  # V100
    assert fast_settings("cuda") == InferenceSettings(torch.float16, True, False)
    monkeypatch.setattr(runtime, "cuda_capability", lambda *args, **kwargs: (8, 0))  # A100
    assert fast_settings("cuda").precision == "bf16"


def test_fast_figure_times_under_fast_settings(clock: ScriptedClock) -> None:
    model = ScriptedModel(clock, [0.5] * 2)
    speed = measure_fps_fast(model, size=8, n_images=1, warmup=1, device="cpu")
    assert speed.settings == fast_settings("cpu")
    assert model.seen == [(False, False, torch.float32, True)] * 2


def test_fps_refuses_zero_images_or_negative_warmup() -> None:
    with pytest.raises(ValueError, match="n_images=0"):
        measure_fps(nn.Conv2d(3, 2, 1), size=8, n_images=0, device="cpu")
    with pytest.raises(ValueError, match="warmup=-1"):
        measure_fps(nn.Conv2d(3, 2, 1), size=8, n_images=1, warmup=-1, device="cpu")


def test_a_registry_model_is_timed_on_normalised_images(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("lraspp_mobilenet_v3_large").eval()
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():  # the split the timing uses gives the model's own output
        assert torch.equal(model.forward_normalized(model.normalize(images)), model(images))
    calls: list[str] = []
    normalize, forward_normalized = model.normalize, model.forward_normalized
    monkeypatch.setattr(model, "normalize", lambda x: calls.append("normalize") or normalize(x))
    monkeypatch.setattr(
        model, "forward_normalized", lambda x: calls.append("forward") or forward_normalized(x)
    )
    speed = measure_fps(model, size=32, n_images=2, warmup=1, device="cpu")
    assert calls == ["normalize", "forward"] * 3 and speed.fps > 0


# --------------------------------------------------------------------------------------------
# Multiply-adds (MMSeg's "GFLOPs"), FLOPs and parameters
# --------------------------------------------------------------------------------------------


class AsFloat(nn.Module):
    """``module`` on uint8 images (the data contract) converted to float."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.float())


def test_gmacs_of_a_1x1_conv_are_its_multiply_adds() -> None:
    size = 16
    count = count_complexity(AsFloat(nn.Conv2d(3, 4, 1, bias=False)), size=size, device="cpu")
    multiply_adds = 3 * 4 * size * size  # one per input channel, output channel and pixel
    assert count.gmacs == pytest.approx(multiply_adds / 1e9, rel=1e-12)
    assert count.gflops == pytest.approx(2 * multiply_adds / 1e9, rel=1e-12)
    assert count.size == size


class PixelwiseNet(nn.Module):
    """A 1x1 conv and a per-pixel Linear, no biases: ``3*4 + 4*5`` multiply-adds per pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=1, bias=False)
        self.linear = nn.Linear(4, 5, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv(images.float())
        return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_linear_layers_count_once_per_multiply_add_and_scale_with_pixels() -> None:
    size = 16
    count = count_complexity(PixelwiseNet(), size=size, device="cpu")
    assert count.gmacs == pytest.approx((3 * 4 + 4 * 5) * size * size / 1e9, rel=1e-12)
    large = count_complexity(PixelwiseNet(), size=4 * size, device="cpu")
    assert large.gmacs == pytest.approx(16 * count.gmacs, rel=1e-12)


class ElementwiseNet(nn.Module):
    """A 1x1 conv, then the layers mmengine gives per-element terms."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.bn_plain = nn.BatchNorm2d(4, affine=False)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.bn_plain(self.bn(self.conv(images.float())))
        x = F.interpolate(self.gn(x), scale_factor=2, mode="bilinear", align_corners=False)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.adaptive_avg_pool2d(x, 4)
        return self.ln(x.permute(0, 2, 3, 1))


def test_gmacs_add_mmengines_per_element_terms() -> None:
    n = 16 * 16  # pixels of the input
    expected = (
        3 * 4 * n  # the conv's multiply-adds
        + 2 * 4 * n  # eval-mode BatchNorm with its affine transform: 2 per element
        + 1 * 4 * n  # ... without one: 1
        + 5 * 4 * n  # GroupNorm (affine): 5 per element
        + 4 * 4 * (4 * n)  # bilinear upsampling: 4 per output element
        + 1 * 4 * (16 * n)  # nearest upsampling: 1 per output element
        + 1 * 4 * (16 * n)  # adaptive average pooling: 1 per input element
        + 5 * 4 * 16  # LayerNorm (affine) on the pooled 4x4: 5 per element
    )
    count = count_complexity(ElementwiseNet(), size=16, device="cpu")
    assert count.gmacs == pytest.approx(expected / 1e9, rel=1e-12)
    assert count.gflops == pytest.approx(2 * 3 * 4 * n / 1e9, rel=1e-12)  # the conv only


def test_a_registry_model_is_counted_in_eval_mode_and_given_back_as_it_was() -> None:
    model = build_model("lraspp_mobilenet_v3_large").train()
    count = count_complexity(model, size=64, device="cpu")
    assert model.training
    # The convolutions dominate; the per-element terms add a few percent.
    assert count.gflops / 2 < count.gmacs < 1.1 * count.gflops / 2


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
