"""Data-parallel training under torchrun (gloo on CPUs, NCCL where there are GPUs): DDP, or FSDP.

``train.batch_size`` is the *global* batch: every step each of the ``W`` processes draws the same
global batch from the same seeded generator and trains on its own ``batch_size / W`` rows, and DDP
averages the gradients. So a run's batches, and (up to the order of float additions) its losses,
do not depend on how many processes share it, and a checkpoint written by one world size resumes
under another. Only rank 0 writes run directories, checkpoints and results.

``train.parallel = "fsdp"`` shards the weights, gradients and AdamW moments over the processes
(PyTorch's FSDP2, ``fully_shard``: each transformer block, then the rest), for models whose training
state does not fit one process. Checkpoints keep the one-process format: at a save every rank hands
its shards to rank 0, which holds one unsharded copy of the weights and moments (:class:`FullStateTwin`)
and writes it as one process would; at a resume rank 0 reads and checks it and sends each rank its
shard. So rank 0 needs room for the weights and moments once; the others hold a 1/W share.

    torchrun --nproc-per-node 2 -m fissure train examples/tiny-gpt.toml
    torchrun --nproc-per-node 2 -m fissure train examples/tiny-gpt.toml --set train.parallel=fsdp
    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m fissure train examples/tiny-gpt.toml          # on each machine
"""

from __future__ import annotations

import os
import copy
from collections.abc import Callable
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


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2 in place: each block of the model's block list is a unit, the root (embeddings, head,
    final norm, tied weights) another; parameters become DTensors sharded along dim 0."""
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ConfigError(f"train.parallel = 'fsdp' needs a model with a block list (a fissure GPT or Llama), "
                          f"not {type(model).__name__}")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)


class FullStateTwin:
    """Rank 0's unsharded copy of an FSDP model and its optimizer: the staging area through which
    checkpoints are written (:meth:`pull`) and read (:meth:`push`) in the one-process format."""

    def __init__(self, model: torch.nn.Module, make_optimizer: Callable, world: World):
        self.world = world
        self.model = copy.deepcopy(model) if world.is_main else None  # made before ``model`` is sharded
        self.optimizer = make_optimizer(self.model) if world.is_main else None

    @staticmethod
    def _options(**kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def pull(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """Gather the full weights and moments from every rank into the copy (a collective: all ranks
        call it); returns the copy's model and optimizer (None on the other ranks)."""
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                             set_optimizer_state_dict)

        weights = get_model_state_dict(model, options=self._options(cpu_offload=True))
        moments = get_optimizer_state_dict(model, optimizer, options=self._options(cpu_offload=True))
        if self.world.is_main:
            self.model.load_state_dict(weights)
            set_optimizer_state_dict(self.model, self.optimizer, moments, options=self._options())
        return self.model, self.optimizer

    def push(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Send the copy's moments (read from a checkpoint) to every rank's shards (a collective)."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        full = get_optimizer_state_dict(self.model, self.optimizer, options=self._options()) \
            if self.world.is_main else {}
        set_optimizer_state_dict(model, optimizer, full, options=self._options(broadcast_from_rank0=True))
