"""The runtime policy, in one place: which device, which precision, how to time and lay out tensors.

Training, evaluation and the table's timings all ask this module, so they agree: one AMP policy
(:func:`amp_dtype`, and :func:`training_precision` for Lightning), one synchronisation before a
clock is read (:func:`synchronize`), one rule for channels-last memory
(:func:`default_channels_last`), one device name for the table, one memory counter for processes
without CUDA (:func:`peak_rss_gb`, :func:`rss_gb`), one count of the cores a process may use
(:func:`available_cores`).

Choosing a device or a precision never initialises CUDA in this process: a fork-based DDP launch
(``ddp_fork``/``ddp_notebook``, Lightning's choice in a notebook) refuses to start once CUDA is
initialised, so everything decided before ``Trainer.fit`` has to stay CUDA-free.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import sys

import torch

from .errors import ConfigError

GB = 1024**3

#: Environment variable giving a process its share of the machine's cores (the suite sets it for
#: models trained side by side); unset: every core the process may run on.
CORES_ENV = "LOVEDA_CORES"


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels so that a clock read means the work is done."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_type(accelerator: str = "auto") -> str:
    """``"cuda"``, ``"mps"`` or ``"cpu"``: where a Lightning-style ``accelerator`` name runs
    (without touching the device)."""
    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return "mps"
    return "cpu"


def resolve_device(accelerator: str = "auto") -> torch.device:
    """The device evaluation runs on, from a Lightning-style ``accelerator`` name.

    Does not initialise CUDA: before initialisation the current device is index 0 (of those
    ``CUDA_VISIBLE_DEVICES`` shows), and ``torch.cuda.current_device()`` would initialise it.
    """
    kind = device_type(accelerator)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"accelerator={accelerator!r} but CUDA is not available on this machine")
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_initialized() else 0)
    return torch.device(kind)


def cuda_capability() -> tuple[int, int] | None:
    """Compute capability ``(major, minor)`` of the current CUDA device, without initialising CUDA
    in this process; ``None`` when it cannot be read.

    Once CUDA is initialised here, torch answers. Before, a throwaway interpreter (with this
    process's ``CUDA_VISIBLE_DEVICES``) reads it, so that this process can still fork DDP ranks.
    """
    if torch.cuda.is_initialized():
        return torch.cuda.get_device_capability()
    code = "import torch; print(*torch.cuda.get_device_capability())"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300, check=True)
        major, minor = (int(v) for v in done.stdout.split())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return major, minor


def native_bf16() -> bool:
    """Whether the current CUDA device computes bf16 natively (Ampere, compute capability 8.0, and
    later); emulated bf16 on earlier GPUs is slower than fp16. Does not initialise CUDA."""
    if torch.version.hip:
        return True
    if torch.cuda.is_initialized():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    capability = cuda_capability()
    return capability is not None and capability >= (8, 0)


def available_cores() -> int:
    """Cores this process may use: those its CPU affinity allows (a batch scheduler's or
    ``taskset``'s share, not the machine's ``os.cpu_count()``), capped by :data:`CORES_ENV` when
    that is set (the suite's share for each of the models it trains side by side)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        cores = os.cpu_count() or 1
    budget = os.environ.get(CORES_ENV, "").strip()
    if budget:
        if not budget.isdigit() or int(budget) < 1:
            raise ValueError(f"${CORES_ENV}={budget!r}: must be a positive number of cores; unset it "
                             "to use every core this process may run on")
        cores = min(cores, int(budget))
    return max(1, cores)


def device_name(device: torch.device | str) -> str:
    """A readable device name for the table (GPU model, or the CPU model and its cores)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GB if sys.platform == "darwin" else peak * 1024 / GB  # bytes on macOS, KiB on Linux


def rss_gb(field: str = "VmRSS") -> float:
    """Resident memory of this process (GiB) from /proc/self/status: ``VmRSS`` now, ``VmHWM``
    its peak (since :func:`reset_peak_rss`); 0 where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024 / GB  # the value is in kB
    except OSError:
        pass
    return 0.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so ``VmHWM`` then measures from now.

    A process started by another one needs it: ``ru_maxrss`` carries the parent's size over
    fork + exec, ``VmHWM`` after this reset is the process's own peak. False where unsupported.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def amp_dtype(device: torch.device, amp: bool | torch.dtype | None = None) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (``None`` = no autocast): the one AMP policy,
    shared by evaluation and fps timing so both run the model in the same precision.

    ``amp=None``: on for CUDA only; ``True``: on for any device; ``False``: off; a dtype: that.
    """
    if amp is None:
        amp = device.type == "cuda"
    if amp is False:
        return None
    if isinstance(amp, torch.dtype):
        return amp
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16  # the dtype CPU autocast is built and tuned for
    return torch.float16


#: Lightning's precision name for each autocast dtype (``None``: no autocast).
LIGHTNING_PRECISION: dict[torch.dtype | None, str] = {
    None: "32-true",
    torch.float16: "16-mixed",
    torch.bfloat16: "bf16-mixed",
}


def lightning_precision(precision: str) -> str:
    """``precision`` under Lightning's own name for it (its aliases ``"16"``, ``"bf16"``, ``"32"``,
    ``"64"`` become ``"16-mixed"``, ``"bf16-mixed"``, ``"32-true"``, ``"64-true"``), so that a run
    states, and :func:`precision_dtype` reads, one name per precision.

    The names are Lightning's (``lightning/fabric/plugins/precision/precision.py``), read when
    asked so that this module stays free of Lightning until then.

    Raises:
        ConfigError: naming ``precision`` and Lightning's names, for a name Lightning refuses
            (its Trainer would raise a ValueError only once the run folder is set up).
    """
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import (
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS_CONVERSION,
    )

    names = get_args(_PRECISION_INPUT_STR)
    canonical = _PRECISION_INPUT_STR_ALIAS_CONVERSION.get(precision, precision)
    if canonical not in names:
        raise ConfigError(f"precision={precision!r}: use None (the AMP policy) or one of "
                          f"Lightning's precisions: {', '.join(names)}")
    return canonical


def training_precision(accelerator: str = "auto", precision: str | None = None) -> str:
    """Lightning's ``precision`` for training on ``accelerator``: ``precision`` when given, else
    :func:`amp_dtype`'s choice, so that training runs in the dtype evaluation and fps timing use
    (fp16 on GPUs without native bf16, bf16 on those with it, 32-bit off CUDA)."""
    if precision is not None:
        return precision
    return LIGHTNING_PRECISION[amp_dtype(torch.device(device_type(accelerator)))]


def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning ``precision`` name (``None`` for full precision)."""
    by_name = {name: dtype for dtype, name in LIGHTNING_PRECISION.items()}
    return by_name.get(precision)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def channels_last_for(device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """Where channels-last pays: the CPU (oneDNN) and CUDA under AMP (tensor cores)."""
    return device.type == "cpu" or (device.type == "cuda" and amp_dtype is not None)


def default_channels_last(device: torch.device, amp: bool | torch.dtype | None = None) -> bool:
    """Whether evaluation runs ``channels_last`` by default on ``device`` under ``amp``."""
    return channels_last_for(device, amp_dtype(device, amp))
