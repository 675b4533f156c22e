"""Multi-process training with torchrun: DistributedDataParallel, NCCL on GPUs, gloo on CPUs.

    torchrun --nproc_per_node 2 -m iqals_fast train --strategy 9 ...            # one machine
    torchrun --nnodes 2 --node_rank R --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
             --nproc_per_node 8 -m iqals_fast train --strategy 9 --device cuda ...   # several

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them training runs as one process. Each
step's global batch (``--batch-size``, the paper's 100) is split evenly between the ranks, so the
averaged gradient and the schedule are the single-process ones; each rank distorts and scores only
its own share of the epoch. Rank 0 alone reads and writes the run directory (checkpoints, metrics)
and sends what it read to the others, so resuming under torchrun needs the run directory on rank
0's machine only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from torchrun's environment (one process without it)."""
    if "WORLD_SIZE" not in os.environ:
        return World()
    try:
        w = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    except (KeyError, ValueError) as e:
        raise ValueError(f"torchrun's environment is incomplete or malformed (RANK, WORLD_SIZE, LOCAL_RANK): {e}") from None
    if not 0 <= w.rank < w.size:
        raise ValueError(f"RANK must lie in [0, WORLD_SIZE), got RANK={w.rank}, WORLD_SIZE={w.size}")
    return w


def setup(w: World, device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device (cuda -> cuda:LOCAL_RANK)."""
    if w.size == 1:
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", w.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def broadcast(obj, w: World):
    """Rank 0's ``obj`` on every rank (a picklable object)."""
    if w.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor, w: World) -> torch.Tensor:
    if w.size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
