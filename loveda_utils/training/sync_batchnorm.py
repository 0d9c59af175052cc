"""Synchronised BatchNorm under DDP, on GPUs and on CPU processes alike.

MMSeg's LoveDA configs train with SyncBN: under DDP each BatchNorm layer normalises with the
statistics of the global batch (every rank's images), not of the rank's own few. Lightning's
``Trainer(sync_batchnorm=True)`` converts the layers to torch's ``SyncBatchNorm`` when a parallel
strategy (DDP, FSDP) sets the model up, and back after the fit; one device trains plain
BatchNorm. torch's layer synchronises on GPUs only (its kernels have no CPU version), so DDP on
CPU processes (gloo) would fail in the first forward pass.

:class:`SyncBatchNormAnyDevice` is torch's layer with a CPU path: the per-channel sum, sum of
squares and pixel count are summed over the ranks by an all-reduce that autograd
differentiates, which gives the global batch's normalisation and gradients (what torch's kernels
compute on GPUs, where it defers to them). :class:`BatchNormSync` is the Lightning plugin that
converts to it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from lightning.pytorch.plugins import TorchSyncBatchNorm
from torch import nn


class SyncBatchNormAnyDevice(nn.SyncBatchNorm):
    """``torch.nn.SyncBatchNorm`` that also synchronises CPU tensors (see the module docstring)."""

    def _syncs(self) -> bool:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size(self.process_group or dist.group.WORLD) > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.device.type != "cpu" or not self._syncs():
            return super().forward(input)
        self._check_input_dim(input)
        group = self.process_group or dist.group.WORLD
        channels = input.shape[1]
        dims = [0, *range(2, input.ndim)]
        x = input.float()  # statistics in float32 whatever the autocast dtype
        local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([x.numel() / channels])])
        total = dist_nn.all_reduce(local, op=dist.ReduceOp.SUM, group=group)
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels : 2 * channels] / count - mean * mean).clamp(min=0)  # biased
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None  # type: ignore[arg-type]
                            else self.momentum)
                unbiased = var * count / (count - 1).clamp(min=1)  # running_var is unbiased (torch)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = (1, channels) + (1,) * (input.ndim - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


class BatchNormSync(TorchSyncBatchNorm):
    """Lightning's SyncBN plugin, converting to :class:`SyncBatchNormAnyDevice`; reverting after
    the fit (Lightning's own ``revert``) gives plain BatchNorm layers back."""

    def apply(self, model: nn.Module) -> nn.Module:
        model = super().apply(model)
        for module in model.modules():
            if type(module) is nn.SyncBatchNorm:
                module.__class__ = SyncBatchNormAnyDevice
        return model
