"""torch.distributed setup for `torchrun`: one process per device, DDP or FSDP2 applied from outside.

The model knows nothing about parallelism. Every rank draws the same depth (it is a function of the
step) and reads its own slice of the same global batch, so N processes compute what one would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device = {name!r} but CUDA is not available here; use device = 'cpu' or 'auto'")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    return torch.device(name)


def init_world(device: torch.device) -> World:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); a single process skips it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return World(rank=rank, size=size, local_rank=local_rank)


def wrap(model: nn.Module, world: World, device: torch.device, strategy: str) -> nn.Module:
    """DDP (a full replica per rank) or FSDP2 (`fully_shard` per block, then the root)."""
    if not world.active:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for block in (*model.transformer.prelude, *model.transformer.core_block, *model.transformer.coda):
            fully_shard(block)
        fully_shard(model)
        register_fsdp_forward_method(model, "forward_depths")  # validation calls it directly
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    if world.active:
        dist.all_reduce(value)
    return value


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
