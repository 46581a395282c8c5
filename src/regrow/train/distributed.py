"""Data-parallel training with torch.distributed, as launched by ``torchrun`` (SPEC §9).

``torchrun --nproc_per_node=N -m regrow train …`` sets RANK/WORLD_SIZE/LOCAL_RANK and the
rendezvous variables; :func:`setup` joins the process group (NCCL on CUDA, gloo on the CPU) and picks
this rank's device. Without those variables everything here is a single-process no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..sparsity.masks import MASK_SUFFIX


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0 writes metrics, checkpoints and summaries."""
        return self.rank == 0


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group if launched by torchrun with more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 2:
        return Context(), device
    context = Context(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return context, device


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, context: Context) -> torch.Tensor:
    """``tensor`` summed over ranks (in place); unchanged on one process."""
    if context.distributed:
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, device: torch.device, context: Context) -> bool:
    """True on every rank if ``flag`` is true on any (so all ranks stop at the same batch)."""
    if not context.distributed:
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


def max_over_ranks(value: int, device: torch.device, context: Context) -> int:
    """The largest ``value`` of any rank, on every rank (so all agree on one decision)."""
    if not context.distributed:
        return value
    tensor = torch.tensor(float(value), device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor)


def gather_objects(value: Any, context: Context) -> list[Any]:
    """``value`` of every rank, in rank order (every rank gets the list)."""
    if not context.distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def wrap(model: torch.nn.Module, context: Context, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model``; the model itself when on one process.

    Mask buffers are excluded from DDP's buffer broadcast: broadcasting them every forward would
    hide a rank whose masks drifted (the sparsifier checks them after every update instead) and
    would cost a copy of every mask per step.
    """
    if not context.distributed:
        return model
    masks = [name for name, _ in model.named_buffers() if name.endswith(MASK_SUFFIX)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, masks)
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
