"""Data parallelism through ``torchrun`` (PyTorch DDP: NCCL on GPUs, gloo on CPU).

The same command line runs alone or under ``torchrun --nproc_per_node=N``. Every rank draws the
whole global batch from the shared, identically seeded generator and keeps its own slice, so
the samples a step sees — and therefore the results — do not depend on ``N`` (up to the order
of the floating-point reductions). Rank 0 alone logs and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, rows: int) -> slice:
        """This rank's rows of a micro-batch of ``rows`` rows."""
        if rows % self.world_size:
            raise ValueError(
                f"the micro-batch of {rows} rows cannot be split evenly over {self.world_size} "
                f"processes: choose batch_size divisible by grad_accum * world size"
            )
        per_rank = rows // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any_flag(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when any rank raised ``flag`` (so all stop at the same step)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: torch.device) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); alone without them."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if dist.is_initialized():
        return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, initialized_here=True)


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks this rank's GPU under torchrun (``LOCAL_RANK``), else the first GPU, else CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {requested!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    elif device.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {requested!r}")
    return device


def wrap_model(model: torch.nn.Module, context: DistributedContext, device: torch.device) -> torch.nn.Module:
    """DDP around ``model`` when several processes run. ``find_unused_parameters`` because the
    official task layout keeps parameters that layer 0 never uses (``v0 v1 v2``)."""
    if not context.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
