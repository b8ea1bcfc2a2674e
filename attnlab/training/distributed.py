"""The torchrun environment: rank, world size, process group, device.

FSDP needs a process group even on one process (its parameters are DTensors over a device mesh), so
``init_distributed(single_process_group=True)`` makes one of size 1 when torchrun did not start the process:
an in-memory store, nothing listens on a port.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # the process group was made here (not the caller's): shutdown destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, info: DistInfo) -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def init_distributed(single_process_group: bool = False) -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU); otherwise nothing, or with
    ``single_process_group`` a group of this one process (gloo for CPU tensors, NCCL for CUDA ones)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if not single_process_group or dist.is_initialized():
            return DistInfo()
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        return DistInfo(owns_group=True)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_initialized():  # the caller's own group: used, and left to the caller
        return DistInfo(rank, local_rank, world)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistInfo(rank, local_rank, world, owns_group=True)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if ``init_distributed`` made it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def agree(info: DistInfo, value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), on every process: how they learn of a failure on one of them."""
    if not info.enabled:
        return [value]
    values: list[Any] = [None] * info.world_size
    dist.all_gather_object(values, value)
    return values


def from_main(info: DistInfo, value: Any) -> Any:
    """The main process's ``value`` (picklable), on every process."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
