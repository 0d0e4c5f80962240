"""Data-parallel training under torchrun (DDP over gloo on CPUs, NCCL where there are GPUs).

``train.batch_size`` is the *global* batch: every step each of the ``W`` processes draws the same
global batch from the same seeded generator and trains on its own ``batch_size / W`` rows, and DDP
averages the gradients. So a run's batches, and (up to the order of float additions) its losses,
do not depend on how many processes share it, and a checkpoint written by one world size resumes
under another. Only rank 0 writes run directories, checkpoints and results.

    torchrun --nproc-per-node 2 -m fissure train examples/tiny-gpt.toml
    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m fissure train examples/tiny-gpt.toml          # on each machine
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch):
        """This process's rows of a global batch (tensors along dim 0; other items as they are)."""
        if self.size == 1:
            return batch
        if isinstance(batch, tuple):
            return tuple(self.shard(b) for b in batch)
        if torch.is_tensor(batch) and batch.dim() > 0:
            rows = batch.shape[0] // self.size
            return batch[self.rank * rows:(self.rank + 1) * rows]
        return batch

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def broadcast(self, value):
        """``value`` as rank 0 has it, on every rank (any picklable object)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_mean(self, value: float) -> float:
        """The mean of a number over the ranks (each rank's loss on its own rows)."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.size


def world_from_env() -> World:
    """The process group torchrun set up (``WORLD_SIZE``, ``RANK``...), joined once; one process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def check_batch(batch_size: int, world: World) -> None:
    if batch_size % world.size:
        raise ConfigError(f"train.batch_size ({batch_size}) is the global batch: it must divide evenly among "
                          f"{world.size} processes")
