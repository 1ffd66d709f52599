"""Several processes with torchrun: the process group, who does what, and the few
collectives the training engine needs.

    torchrun --nproc_per_node 2 -m ensemble_mde train-base ldrn --preset cpu

torchrun starts one process per rank and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT; `init` joins the group they describe (nccl on CUDA, each rank on
cuda:LOCAL_RANK; gloo otherwise). Without those variables everything here is a no-op
for one process. Conventions: rank 0 alone logs, draws progress and writes files; every
rank runs the same steps in the same order, so collectives always match.
"""

from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
MAIN_FIRST_TIMEOUT = timedelta(hours=12)  # rank 0 alone may fill a prediction cache of all NYU frames

_main_first_group = None  # a gloo group with a long timeout for `main_process_first`


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in TORCHRUN_VARIABLES)


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun); valid before `init`."""
    return int(os.environ.get("RANK", 0)) if launched_by_torchrun() else 0


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this rank's device: cuda:LOCAL_RANK
    for a CUDA device, else `device` unchanged (gloo). Without torchrun: `device`."""
    global _main_first_group
    if not launched_by_torchrun():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _main_first_group = dist.new_group(backend="gloo", timeout=MAIN_FIRST_TIMEOUT)
        atexit.register(shutdown)
    return device


def shutdown() -> None:
    global _main_first_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _main_first_group = None


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextmanager
def main_process_first():
    """Rank 0 runs the body first while the other ranks wait (e.g. rank 0 fills a cache
    that the others then only open); then the others run it."""
    if world_size() > 1 and not is_main():
        dist.barrier(group=_main_first_group)
    yield
    if world_size() > 1 and is_main():
        dist.barrier(group=_main_first_group)


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (float64); `values` itself for one process."""
    if world_size() == 1:
        return [float(v) for v in values]
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def gather_lists(items: list) -> list:
    """Concatenation of every rank's `items` (picklable objects), in rank order."""
    if world_size() == 1:
        return list(items)
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def shard_indices(n: int) -> list[int]:
    """Indices rank r handles when n items are dealt round-robin: r, r + world, ..."""
    return list(range(rank(), n, world_size()))


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: the gradient of a sum over ranks is the sum over
    ranks of the gradients flowing into it."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all ranks), for
    CPU/gloo, where torch.nn.SyncBatchNorm has no kernel. Mean, then variance of the
    centred values (two all-reduces of [C] sums, in float32); gradients flow through the
    sums to every rank. Eval mode uses the running statistics."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        dtype, x = x.dtype, x.float()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        sums = _SumOverRanks.apply(torch.cat([x.sum(dims), count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), momentum)
        return out.to(dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `model` synchronised over the ranks (train.sync_bn): torch's
    SyncBatchNorm on CUDA, GlooSyncBatchNorm elsewhere. The Parameter and buffer objects
    are kept, so optimiser groups built before the conversion stay valid. No-op for one
    process."""
    if world_size() == 1:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlooSyncBatchNorm):
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            for key, param in child.named_parameters(recurse=False):
                setattr(synced, key, param)
            for key, buffer in child.named_buffers(recurse=False):
                setattr(synced, key, buffer)
            synced.train(child.training)
            setattr(model, name, synced)
        else:
            convert_sync_batchnorm(child, device)
    return model
