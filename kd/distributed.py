"""Data-parallel training across processes (``torchrun``): the process group, sharding, and sums across ranks.

One rule keeps a distributed run equal to a single-process one: every rank draws the same global shuffle and the
same augmentation from the same generator, and keeps its own contiguous slice of each global batch
(:func:`shard`). The ranks' slices together are exactly the single-process batch, and DistributedDataParallel
averages the ranks' gradients, which (equal slices, mean-reduced losses) is the gradient of the whole batch.

Launched without torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) every function here is a no-op that answers as
rank 0 of 1, so library code calls them unconditionally.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands, from torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "DistEnv":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def initialized() -> bool:
    """A process group with more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def env() -> DistEnv:
    """This process's rank and world: from the process group when it is up, else from the environment."""
    if initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistEnv.from_env()


def rank() -> int:
    return env().rank if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    """True on rank 0, and in any process not part of a multi-rank group: the one that prints and writes files."""
    return rank() == 0


def init_distributed(device: torch.device | str, timeout_s: float = 1800) -> DistEnv:
    """Joins the process group torchrun set up (env:// rendezvous): nccl on CUDA, gloo on the CPU. On CUDA each
    process takes GPU ``LOCAL_RANK`` (``torch.device("cuda")`` then means that GPU). A no-op outside torchrun or when
    the group is already up. Returns this process's :class:`DistEnv`."""
    info = DistEnv.from_env()
    if not info.distributed or (dist.is_available() and dist.is_initialized()):
        return env() if info.distributed else info
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    return env()


def local_device(device: torch.device | str) -> torch.device:
    """``cuda`` → ``cuda:LOCAL_RANK`` under torchrun (each rank its own GPU); anything else unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and initialized():
        return torch.device("cuda", env().local_rank)
    return device


def cleanup() -> None:
    """Leaves the process group (when one is up)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, the others after it (e.g. decode a data set into the cache once; the other
    ranks then read the cache)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def shard(indices: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous slice of one global batch of ``indices`` (B,): ``B / world`` entries.

    Raises:
        ValueError: when ``B`` does not divide by ``world`` (the ranks would see unequal batches, and the averaged
            gradient would no longer be the whole batch's).
    """
    b = indices.shape[0]
    if b % world:
        raise ValueError(f"a global batch of {b} images does not divide among {world} processes; pass a --batch-size "
                         f"that is a multiple of {world}")
    per = b // world
    return indices[rank * per:(rank + 1) * per]


def per_rank_batch(batch_size: int, world: int) -> int:
    """``batch_size / world``; a ValueError naming both when it does not divide."""
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} does not divide among {world} processes; pass a multiple of "
                         f"{world} (it is the global batch: each process takes --batch-size / {world})")
    return batch_size // world


def all_reduce_sum(values: list[float] | torch.Tensor, device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64 on ``device``; gloo on the CPU, nccl on CUDA)."""
    t = torch.as_tensor(values, dtype=torch.float64, device=device).flatten().clone()
    if initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copies ``module``'s parameters and buffers from rank ``src`` to every rank (e.g. BatchNorm running statistics,
    which each rank updates from its own slice)."""
    if not initialized():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def gather_objects(obj: object) -> list[object]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` outside a group)."""
    if not initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def to_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm layer → :class:`torch.nn.SyncBatchNorm` with the same state (statistics over the global
    batch; SyncBatchNorm trains on CUDA only). :func:`from_sync_batchnorm` undoes it."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        return _swap_bn(module, nn.SyncBatchNorm, type(module))
    for name, child in module.named_children():
        new = to_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def from_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Each SyncBatchNorm made by :func:`to_sync_batchnorm` back to its original class with the state it has now,
    so the model saves, prunes and exports as before."""
    if isinstance(module, nn.SyncBatchNorm):
        return _swap_bn(module, getattr(module, "_kd_original", nn.BatchNorm2d), None)
    for name, child in module.named_children():
        new = from_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _swap_bn(bn: nn.Module, cls: type, original: type | None) -> nn.Module:
    """A ``cls`` layer holding the very parameter and buffer objects of ``bn`` (an optimizer built over the model
    keeps working, and the state is shared, not copied)."""
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    for name, p in bn.named_parameters(recurse=False):
        setattr(new, name, p)
    for name, b in bn.named_buffers(recurse=False):
        new.register_buffer(name, b)
    new.train(bn.training)
    if original is not None:
        new._kd_original = original
    return new
