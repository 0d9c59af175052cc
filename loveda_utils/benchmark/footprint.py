"""What a model will cost before it runs: its parameters, its checkpoint, its training memory.

Everything here comes from a build on PyTorch's ``meta`` device: tensors there have shapes and
dtypes but no storage, and operations on them compute shapes only. So a model is "built" and
run forward at the real batch and crop size in a fraction of a second, with no weights
allocated, nothing downloaded and no GPU needed (:func:`footprint`). The pre-flight
(:mod:`loveda_utils.benchmark.preflight`) budgets disk and GPU memory from it.

Training memory is what autograd keeps for the backward pass (every tensor saved by an
operation of the forward, counted once per storage) plus the weights, gradients and optimiser
state; see :func:`training_memory_bytes` for the factors and where they come from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..models.wrapper import SegmentationModel, build_model
from ..runtime import GB

#: Bytes of one fp32 value (weights, gradients and optimiser state are fp32, AMP or not).
FLOAT_BYTES = 4
#: A checkpoint holds the weights and the optimiser state (SGD: one momentum buffer; AdamW: two
#: moments) beside a few scalars; three fp32 copies of the parameters cover both optimisers
#: with room for the copy Lightning writes before replacing ``last.ckpt``.
CHECKPOINT_COPIES = 3
#: Optimiser state per parameter, in fp32 values (``training/recipe.py``'s ``OPTIMIZERS``).
OPTIMIZER_STATE = {"sgd": 1, "adamw": 2}
#: Peak allocator memory over what the forward saves: the backward holds the gradients of
#: the activations it is working through, and the caching allocator rounds blocks up. MMSeg's
#: LoveDA table (``loveda_utils/results/references.csv``, fp32, 4 images of 512 px per GPU) puts
#: PSPNet R-101-D8 at 9.61 GB and DeepLabV3+ R-18-D8 at 1.93 GB, about 1.3 times what the
#: forward of the same architectures here saves at that batch (7.3 and 1.5 GB).
BACKWARD_FACTOR = 1.3
#: Mixed precision keeps the activations in 16 bits (half of fp32) and a 16-bit copy of each
#: weight for the forward (``torch.autocast``'s cast cache).
MIXED_ACTIVATION_SHARE = 0.5
MIXED_WEIGHT_COPY_BYTES = 2
#: Device memory the allocator does not count but the process uses: the CUDA context and
#: cuDNN's workspace (about half a gigabyte each on current GPUs and drivers).
CUDA_OVERHEAD_BYTES = GB


@dataclass(frozen=True)
class Footprint:
    """A model's size, and what its forward saves for backward at one batch and crop size.

    ``saved_bytes`` is ``None`` when the forward was not run (only the size was asked for).
    """

    model: str
    params: int
    batch_size: int | None = None
    crop_size: int | None = None
    saved_bytes: int | None = None

    @property
    def checkpoint_bytes(self) -> int:
        """The size budgeted for the run's ``last.ckpt`` (see :data:`CHECKPOINT_COPIES`)."""
        return self.params * FLOAT_BYTES * CHECKPOINT_COPIES


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter and buffer registered inside the block moves to the meta device as it is
    registered, so that the initialisation that follows (``reset_parameters``, ``nn.init``) runs
    on shapes only. Building under ``torch.device("meta")`` instead would also put the scalars
    some constructors read back (``.item()``, e.g. SegFormer's drop-path rates) on meta."""
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def parameter_on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register_parameter(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to("meta"), param.requires_grad)

    def buffer_on_meta(self: nn.Module, name: str, tensor: torch.Tensor | None,
                       persistent: bool = True) -> None:
        register_buffer(self, name, tensor, persistent)
        if tensor is not None:
            self._buffers[name] = tensor.to("meta")

    nn.Module.register_parameter = parameter_on_meta  # type: ignore[method-assign]
    nn.Module.register_buffer = buffer_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def meta_model(name: str) -> SegmentationModel:
    """Registry model ``name`` with every parameter and buffer on the meta device (no weights
    are read: pretrained weights do not change shapes)."""
    with _parameters_on_meta():
        return build_model(name, pretrained="none")


def saved_for_backward_bytes(model: nn.Module, batch: torch.Tensor) -> int:
    """Bytes autograd keeps from ``model.forward_train(batch)`` (the training forward, with the
    auxiliary head): each saved tensor's storage counted once, as a view shares its base's."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage._cdata] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.forward_train(batch)  # type: ignore[operator]
    return sum(storages.values())


def footprint(name: str, batch_size: int | None = None, crop_size: int | None = None) -> Footprint:
    """Parameters of registry model ``name``; with ``batch_size`` and ``crop_size``, also what its
    training forward saves for backward on a ``batch_size x 3 x crop x crop`` uint8 batch."""
    model = meta_model(name)
    params = sum(p.numel() for p in model.parameters())
    if batch_size is None or crop_size is None:
        return Footprint(name, params)
    batch = torch.zeros(batch_size, 3, crop_size, crop_size, dtype=torch.uint8, device="meta")
    saved = saved_for_backward_bytes(model, batch)
    return Footprint(name, params, batch_size, crop_size, saved)


def training_memory_bytes(fp: Footprint, optimizer: str, mixed_precision: bool) -> int:
    """Estimated peak device memory of training ``fp`` (run with a batch and crop size).

    Weights, gradients and optimiser state in fp32 (plus the 16-bit weight copy under mixed
    precision), the saved activations (halved under mixed precision) times
    :data:`BACKWARD_FACTOR`, and :data:`CUDA_OVERHEAD_BYTES`.
    """
    if fp.saved_bytes is None:
        raise ValueError(f"footprint of {fp.model!r} has no activations: pass batch_size and crop_size")
    per_param = FLOAT_BYTES * (2 + OPTIMIZER_STATE[optimizer])
    activations = fp.saved_bytes
    if mixed_precision:
        per_param += MIXED_WEIGHT_COPY_BYTES
        activations = int(activations * MIXED_ACTIVATION_SHARE)
    return int(fp.params * per_param + activations * BACKWARD_FACTOR + CUDA_OVERHEAD_BYTES)
