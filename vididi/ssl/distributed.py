"""Small helpers for torch.distributed: rank/world, autograd-aware gather, global batch norm.

Every helper is a no-op (identity, rank 0 of 1) when no process group is initialised, so single-
process code calls them unconditionally.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

# torch 2.14 flags these public autograd-aware collectives as deprecated in favour of the private
# torch.distributed._functional_collectives; they are still correct (tested), so silence only that
# notice instead of printing it on every rank.
warnings.filterwarnings(
    "ignore",
    message=r"torch\.distributed\.nn\.functional\.all_(gather|reduce) is deprecated",
    category=FutureWarning,
)


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in single-process runs): the process that logs and writes files."""
    return world()[0] == 0


def gather(x: Tensor) -> Tensor:
    """Concatenate `x` from every rank along dim 0, in rank order, keeping the autograd graph.

    Gradients flow back to each rank's own slice (the backward sums the contributions of every
    rank's loss), so a loss computed identically on every rank from the gathered tensor, followed by
    DDP's gradient averaging, yields exactly the full-batch gradient. Identity without a group.
    Every rank must pass the same shape (all_gather cannot pad): use drop_last in the sampler.
    """
    if world()[1] == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are taken over the global batch of all ranks.

    For CPU process groups (gloo), where torch's SyncBatchNorm refuses to run. In training mode the
    per-channel sum, sum of squares and element count are all-reduced with an autograd-aware
    all_reduce, then  y = (x - mean) / sqrt(var_biased + eps) * weight + bias  with the global mean
    and biased variance; running_mean/running_var are updated like nn.BatchNorm (unbiased variance,
    `momentum`, or a cumulative average when momentum is None). The statistics are accumulated in
    float64 so E[x^2] - E[x]^2 does not cancel catastrophically. Works on inputs (N, C, *) of any
    rank >= 2; without a process group it is numerically nn.BatchNorm.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.ndim < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

        reduce_dims = [0, *range(2, x.ndim)]
        x64 = x.double()
        local_count = x.numel() // x.shape[1]
        stats = torch.cat(
            [
                x64.sum(reduce_dims),
                x64.square().sum(reduce_dims),
                torch.tensor([float(local_count)], dtype=torch.float64, device=x.device),
            ]
        )
        if world()[1] > 1:
            stats = dist_fn.all_reduce(stats)
        channels = x.shape[1]
        n = int(stats[-1].item())
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean.square()).clamp_min(0.0)  # biased

        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1))

        shape = (1, channels) + (1,) * (x.ndim - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        y = (x - mean.to(x.dtype).view(shape)) * scale.to(x.dtype).view(shape)
        return y if self.bias is None else y + self.bias.to(x.dtype).view(shape)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm) -> GlobalBatchNorm:
        """A GlobalBatchNorm with `bn`'s settings, parameters and buffers (training flag included)."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        floats = [t for t in (*bn.parameters(), *bn.buffers()) if t.is_floating_point()]
        new.to(device=_module_device(bn), dtype=floats[0].dtype if floats else None)  # a float64 model stays float64
        with torch.no_grad():
            if bn.affine:
                new.weight.copy_(bn.weight)
                new.bias.copy_(bn.bias)
                new.weight.requires_grad_(bn.weight.requires_grad)
                new.bias.requires_grad_(bn.bias.requires_grad)
            if bn.track_running_stats:
                new.running_mean.copy_(bn.running_mean)
                new.running_var.copy_(bn.running_var)
                new.num_batches_tracked.copy_(bn.num_batches_tracked)
        new.train(bn.training)
        return new


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Make every BatchNorm of `module` use global-batch statistics under a process group.

    No process group (or world size 1): `module` is returned unchanged. NCCL backend: torch's
    nn.SyncBatchNorm. Any other backend (gloo, CPU): `GlobalBatchNorm`. Returns the converted
    module (the root itself is replaced when it is a BatchNorm), like torch's converter.
    """
    if world()[1] == 1:
        return module
    if dist.get_backend() == dist.Backend.NCCL:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global_batchnorm(module)


def _to_global_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm | nn.SyncBatchNorm):
        return GlobalBatchNorm.from_batchnorm(module)
    for name, child in module.named_children():
        converted = _to_global_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
