"""torch.distributed glue for ``torchrun -m ovss eval``: one process per GPU (NCCL) or CPU worker (gloo).

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; multi-node runs use
torchrun's usual flags (``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``). Images are sharded by index
(``remaining[rank::world]``); the int64 accumulators are summed with ``all_reduce``; only rank 0 writes results.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    owned: bool = False          # we initialised the process group (and destroy it at the end)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: Optional[str] = None, backend: Optional[str] = None) -> tuple[DistInfo, Optional[str]]:
    """Join the process group torchrun describes (no-op for a single process).

    Returns the info and the device this rank should use (``cuda:<local_rank>`` for a CUDA run)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = (device is None and torch.cuda.is_available()) or (device is not None and str(device).startswith("cuda"))
    if want_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, dist.get_backend(), False), device
    backend = backend or os.environ.get("OVSS_DIST_BACKEND") or ("nccl" if want_cuda else "gloo")
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=int(os.environ.get("OVSS_DIST_TIMEOUT_H", "12"))))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, backend, True), device


def finish(info: DistInfo) -> None:
    if info.owned and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.active:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.local_rank])
        else:
            dist.barrier()


def sum_int64(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """all_reduce(SUM) of an int64 tensor, on the device the backend needs."""
    if not info.active:
        return t
    dev = torch.device("cuda", info.local_rank) if info.backend == "nccl" else torch.device("cpu")
    x = t.to(dev, torch.int64).contiguous()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x.to(t.device)


def gather_objects(obj: Any, info: DistInfo) -> list:
    if not info.active:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
