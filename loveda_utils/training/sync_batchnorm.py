"""Synchronised BatchNorm under DDP, on GPUs and on CPU processes alike.

MMSeg's LoveDA configs train with SyncBN: under DDP each BatchNorm layer normalises with the
statistics of the global batch (every rank's images), not of the rank's own few. Lightning's
``Trainer(sync_batchnorm=True)`` converts the layers to torch's ``SyncBatchNorm`` when a parallel
strategy (DDP, FSDP) sets the model up, and back after the fit; one device trains plain
BatchNorm. torch's layer synchronises on GPUs only: its kernels have no CPU version, and
``DistributedDataParallel`` refuses it in a CPU model.

:class:`BatchNormSync` is the Lightning plugin that keeps torch's layer on GPUs and, for CPU
processes (gloo), turns each BatchNorm layer into a :class:`CPUSyncBatchNorm` in place: the
per-channel sum, sum of squares and pixel count are summed over the ranks by an all-reduce that
autograd differentiates, which gives the global batch's normalisation and gradients (what
torch's kernels compute on GPUs). After the fit the layers are plain BatchNorm again.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from lightning.pytorch.plugins import TorchSyncBatchNorm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class CPUSyncBatchNorm(_BatchNorm):
    """A BatchNorm layer whose training statistics span every DDP rank, on CPU tensors.

    Made from an existing BatchNorm layer by :meth:`convert` (same parameters and buffers, in
    place) and turned back by :meth:`revert`. Outside training, or without a process group of
    more than one process, it is the plain layer.
    """

    _plain_class: type[_BatchNorm]

    @classmethod
    def convert(cls, module: _BatchNorm) -> None:
        module.__dict__["_plain_class"] = type(module)  # a plain attribute (not a submodule)
        module.__class__ = cls

    def revert(self) -> None:
        self.__class__ = self._plain_class  # type: ignore[assignment]
        del self._plain_class

    def _check_input_dim(self, input: torch.Tensor) -> None:
        self._plain_class._check_input_dim(self, input)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        syncs = self.training and dist.is_available() and dist.is_initialized()
        if not syncs or dist.get_world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.ndim)]
        # Statistics in float32 at least, whatever the autocast dtype.
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([x.numel() / channels])])
        total = dist_nn.all_reduce(local, op=dist.ReduceOp.SUM)
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels : 2 * channels] / count - mean * mean).clamp(min=0)  # biased
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None  # type: ignore[arg-type]
                            else self.momentum)
                unbiased = var * count / (count - 1).clamp(min=1)  # running_var is unbiased
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = (1, channels) + (1,) * (input.ndim - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


class BatchNormSync(TorchSyncBatchNorm):
    """Lightning's SyncBN plugin for the device type training runs on: torch's ``SyncBatchNorm``
    on GPUs, :class:`CPUSyncBatchNorm` on the CPU (see the module docstring)."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type

    def apply(self, model: nn.Module) -> nn.Module:
        if self.device_type != "cpu":
            return super().apply(model)
        for module in model.modules():
            if isinstance(module, _BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
                CPUSyncBatchNorm.convert(module)
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        if self.device_type != "cpu":
            return super().revert(model)
        for module in model.modules():
            if isinstance(module, CPUSyncBatchNorm):
                module.revert()
        return model
