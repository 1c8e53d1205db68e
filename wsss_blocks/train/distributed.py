"""Distributed data parallel (DDP) helpers: torchrun detection, deterministic sharding, metric reduction.

Launch with ``torchrun --nproc_per_node N -m wsss_blocks.cli train-cam ...``; without torchrun
(no ``WORLD_SIZE`` in the environment) everything runs in one process and the helpers are no-ops. The
backend is NCCL on CUDA and gloo on CPU (this is how the CPU tests run two processes).

Sharding is deterministic: every epoch's permutation is drawn from a generator seeded with
``seed + epoch`` (identical on all ranks), cut into global batches, and rank ``r`` takes the ``r``-th
slice of each global batch. Ranks therefore see disjoint samples, the union of their micro-batches is the
single-process batch, and a resumed run can restart exactly at batch ``k`` of epoch ``e``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistEnv",
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "epoch_batches",
    "init_distributed",
    "reduce_mean_dict",
    "resolve_device",
    "shard_indices",
    "wrap_ddp",
]


@dataclass
class DistEnv:
    """Process placement: ``rank`` of ``world_size`` processes, device and whether DDP is active."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """More than one process (DDP)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` if CUDA is available else ``cpu``; other names as given."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"runtime.device is {name!r} but CUDA is not available; use 'cpu' or 'auto'")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str = "auto") -> DistEnv:
    """Detect torchrun (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``) and initialise the process group once.

    Returns a single-process `DistEnv` without torchrun.

    Examples:
        >>> env = init_distributed("cpu")
        >>> env.world_size, env.is_main
        (1, True)
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world <= 1:
        return DistEnv(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistEnv(rank, world, local, dev, backend)


def cleanup() -> None:
    """Destroy the process group if this process created one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def epoch_batches(num_samples: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
                  shuffle: bool = True) -> list[list[int]]:
    """This rank's micro-batches (dataset indices) for one epoch; the last incomplete batch is dropped.

    Args:
        num_samples: dataset length.
        batch_size: global batch size (must be divisible by ``world_size``).
        epoch: epoch number (the permutation is seeded with ``seed + epoch``).
        seed: run seed.
        rank: this process's rank.
        world_size: the number of processes.
        shuffle: permute (True) or keep dataset order.

    Examples:
        >>> epoch_batches(10, 4, epoch=0, seed=0, shuffle=False, rank=1, world_size=2)
        [[2, 3], [6, 7]]
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad sharding arguments batch_size={batch_size}, rank={rank}, world_size={world_size}")
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes {world_size}")
    if num_samples < batch_size:
        raise ValueError(f"the dataset has {num_samples} samples, fewer than one batch of {batch_size}")
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) + int(epoch))
        order = torch.randperm(num_samples, generator=g).tolist()
    else:
        order = list(range(num_samples))
    per = batch_size // world_size
    return [order[b * batch_size + rank * per: b * batch_size + (rank + 1) * per]
            for b in range(num_samples // batch_size)]


def shard_indices(num_samples: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Indices ``rank, rank + world_size, ...`` (inference sharding; every sample on exactly one rank)."""
    return list(range(rank, num_samples, world_size))


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum a tensor over all ranks in place (no-op in a single process); returns it."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def reduce_mean_dict(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (keys must be identical on every rank)."""
    if not _active() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank (a one-element list in a single process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(module: nn.Module, env: DistEnv, find_unused_parameters: bool = True) -> nn.Module:
    """``DistributedDataParallel(module)`` under torchrun, the module itself otherwise."""
    if not env.distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=find_unused_parameters)
