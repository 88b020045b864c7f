"""``torchrun`` integration: process group, rank queries, reductions.

A run is distributed when ``WORLD_SIZE > 1`` in the environment (set by ``torchrun``). The
backend is NCCL for CUDA and Gloo otherwise. Only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 outside ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 outside DDP)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the group (1 outside DDP)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank on this machine (``LOCAL_RANK``, 0 outside ``torchrun``): the CUDA device index."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0, the only process that writes files."""
    return get_rank() == 0


def init_distributed(device_type: str) -> bool:
    """Initialise the default process group if launched by ``torchrun`` with several ranks.

    Args:
        device_type: ``"cuda"`` selects NCCL (and this rank's local GPU), anything else Gloo.

    Returns:
        True if a process group is (now) initialised with world size > 1.
    """
    if env_world_size() <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend)
    return is_distributed()


def destroy_distributed() -> None:
    """Tear down the process group if this process created one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (a copy; identity outside DDP). Gloo needs CPU tensors for int64."""
    if not is_distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    """Wait for every rank (no-op outside DDP)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from ``src`` to every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
