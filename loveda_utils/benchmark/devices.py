"""The CUDA devices models may run on, read without creating a CUDA context here.

The pre-flight (:mod:`loveda_utils.benchmark.preflight`) compares each model's training memory
with them. Reading a device's properties through torch initialises CUDA in the calling process,
whose context then holds device memory for as long as the process lives: the suite's process,
which trains nothing, would take it from the model training on that device, and a process that
later forks DDP ranks must not have initialised CUDA. So, as
:func:`loveda_utils.runtime.cuda_capability` does, a throwaway interpreter reads them (once CUDA
is initialised here anyway, torch answers directly).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..runtime import GB

#: Printed by the throwaway interpreter: ``[index, name, total bytes]`` per visible device.
_READ_DEVICES = (
    "import json, torch; print(json.dumps([[i, p.name, p.total_memory] for i in "
    "range(torch.cuda.device_count()) for p in [torch.cuda.get_device_properties(i)]]))"
)


@dataclass(frozen=True)
class Device:
    """A CUDA device a model may run on."""

    index: int
    name: str
    total_bytes: int

    def __str__(self) -> str:
        return f"cuda:{self.index} {self.name} ({self.total_bytes / GB:.1f} GB)"


def _all_devices() -> list[Device]:
    if torch.cuda.is_initialized():
        return [Device(i, p.name, int(p.total_memory)) for i in range(torch.cuda.device_count())
                for p in [torch.cuda.get_device_properties(i)]]
    try:  # this process's CUDA_VISIBLE_DEVICES goes to the child
        done = subprocess.run([sys.executable, "-c", _READ_DEVICES], capture_output=True,
                              text=True, timeout=300, check=True)
        return [Device(int(i), str(name), int(total)) for i, name, total in json.loads(done.stdout)]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise ConfigError(f"CUDA is available but its devices could not be read ({exc}); check "
                          "`nvidia-smi`, or pass --skip-check") from None


def cuda_devices(ids: Sequence[str] | None = None) -> list[Device]:
    """The visible CUDA devices (those of ``ids`` only, e.g. ``--gpus``); empty without CUDA.

    Raises:
        ConfigError: an id in ``ids`` that is not a visible device.
    """
    if not torch.cuda.is_available():
        return []
    devices = _all_devices()
    if ids is None:
        return devices
    by_index = {str(d.index): d for d in devices}
    for value in ids:
        if str(value) not in by_index:
            raise ConfigError(f"--gpus {value!r}: this machine has CUDA devices "
                              f"{', '.join(by_index) or 'none'}")
    return [by_index[str(value)] for value in ids]
