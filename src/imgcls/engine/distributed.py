"""Data-parallel training under torchrun: process group set-up, rank checks, metric reduction.

torchrun (torch.distributed.run) starts the processes and sets RANK, LOCAL_RANK and WORLD_SIZE;
imgcls only joins the group (gloo on the CPU, nccl on CUDA) and shards each global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Only the main process writes the run folder and logs progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun prepared (if any); return the context and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        # Processes share the cores: without this each would start one thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return Dist(dist.get_rank(), dist.get_world_size()), device


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (a no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_count(count: int, device: torch.device) -> int:
    """The number of pictures in this batch over all ranks (`count` in one process)."""
    if world_size() == 1:
        return count
    return int(all_reduce_sum(torch.tensor([count], device=device)).item())


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum every rank uses is the sum of their gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(grad.contiguous())


class _GlooSyncBatchNorm:
    """BatchNorm whose training statistics are those of the global batch over all ranks, on the CPU too
    (torch.nn.SyncBatchNorm runs on GPUs only). Mixed into the layer's own class in place, so the
    model's block lists, names and state dict stay as they are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1, *([1] * (x.ndim - 2))]
        count = _AllReduceSum.apply(torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device))
        mean = _AllReduceSum.apply(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count  # two passes: as exact as one process's
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


_SYNC_CLASSES: dict[type, type] = {}


def convert_sync_batchnorm(model: torch.nn.Module) -> int:
    """--sync-bn: every trainable BatchNorm layer normalises with the global batch's statistics, on any
    device (torch.nn.SyncBatchNorm would need CUDA and a rebuilt model). Returns the layers converted."""
    from torch.nn.modules.batchnorm import _BatchNorm

    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and not isinstance(m, _GlooSyncBatchNorm)
              and any(p.requires_grad for p in m.parameters(recurse=False))]
    for layer in layers:
        base = type(layer)
        if base not in _SYNC_CLASSES:
            _SYNC_CLASSES[base] = type(f"Sync{base.__name__}", (_GlooSyncBatchNorm, base), {})
        layer.__class__ = _SYNC_CLASSES[base]
    return len(layers)
