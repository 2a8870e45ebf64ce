"""Data-parallel training across processes: torchrun's environment, the process group, and the
few collectives the trainer needs.

torchrun (torch.distributed.run) starts the processes and sets RANK, LOCAL_RANK and WORLD_SIZE;
without them training is one process and every call here is a no-op. ``data.batch_size`` is the
global batch: each of the N processes takes batch_size / N samples of every step, so the
learning rate means the same thing whatever N is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, RandomSampler, Sampler

# A peer that died surfaces as an error after this long at the latest, never as a silent hang.
# Rank 0 may validate a large dataset or download a registered checkpoint while the others wait.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


class DistributedError(RuntimeError):
    """The process group could not form, or a setting does not fit the number of processes."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    launched: bool = False  # torchrun started this process: it must never launch torchrun again

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files, talks to MLflow and holds the output folder's lock."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls) -> World:
        """Read torchrun's variables; a malformed one is a clear error."""
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as exc:
            raise DistributedError(
                f"WORLD_SIZE, RANK or LOCAL_RANK is not a number ({exc}); start with torchrun"
            ) from None
        if not 0 <= rank < size:
            raise DistributedError(f"RANK {rank} is outside WORLD_SIZE {size}; start the processes with torchrun")
        return cls(rank, local, size, launched="WORLD_SIZE" in os.environ)


SINGLE = World()  # one process, not under torchrun: every collective below is a no-op


def local_batch(batch_size: int, world: World) -> int:
    """The per-process share of the global ``data.batch_size``."""
    if batch_size % world.size:
        raise DistributedError(
            f"data.batch_size {batch_size} is the global batch and must divide evenly over {world.size} "
            f"processes; use a multiple of {world.size}"
        )
    return batch_size // world.size


def rank_seed(seed: int, world: World) -> int:
    """The seed of this process's random stream (augmentation, dropout): rank 0 keeps ``seed``,
    so rank 0 of N draws what a single process draws."""
    if world.rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, world.rank]).generate_state(1, np.uint64)[0] >> 1)


class RankBatches(Sampler[list[int]]):
    """This process's share of each global batch, in the order one process would train them.

    The global batches come from the same shuffle as a single-process DataLoader with the same
    generator (seeded per epoch), so N processes train the same samples at each step as one
    process does. Each rank takes every N-th sample of a batch; a last batch smaller than N is dropped.
    """

    def __init__(self, size: int, batch_size: int, world: World, generator: torch.Generator) -> None:
        self.size = size
        self.batch_size = batch_size
        self.world = world
        self.generator = generator
        local_batch(batch_size, world)  # fail early on a batch that does not divide

    def __iter__(self) -> Iterator[list[int]]:
        # Lazy, like the single-process sampler: the DataLoader draws its base seed from the
        # generator first, then the shuffle is drawn.
        order = RandomSampler(range(self.size), generator=self.generator)
        for batch in BatchSampler(order, self.batch_size, drop_last=False):
            if len(batch) < self.world.size:
                return
            yield batch[self.world.rank :: self.world.size]

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest >= self.world.size else 0)


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """The group torchrun set up (NCCL on CUDA, gloo on CPU), joined for the block and left after it,
    also on failure; a group that cannot form says why."""
    if not world.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT, device_id=device if backend == "nccl" else None)
    except (RuntimeError, ValueError) as exc:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise DistributedError(
            f"rank {world.rank} of {world.size} could not join the process group at {where} ({backend}: {exc}); "
            "check that every node runs the same torchrun command with the same --rdzv-endpoint, and that "
            "the port is reachable"
        ) from None
    try:
        yield
    finally:
        dist.destroy_process_group()


def mean_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a tensor over all processes (itself in one process)."""
    if not world.distributed:
        return values
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world.size


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank when it is true on one (a stop request, so all ranks stop at one step)."""
    if not world.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast(value: object, world: World) -> object:
    """Rank 0's ``value`` on every rank (small Python objects: a path, a flag, an error message)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_decides(decision: bool | None, world: World) -> bool:
    """The rank-0 hand-off: rank 0 passes its decision (whether to train at all), the other ranks
    pass None and wait for it; every rank returns rank 0's decision."""
    return bool(broadcast(decision, world))
