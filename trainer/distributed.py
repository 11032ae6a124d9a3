"""Data-parallel training under `torchrun`: which process this is, and the few agreements the ranks need.

`torchrun --nproc_per_node N -m trainer run <job-uri>` starts N copies of the trainer with RANK, WORLD_SIZE and
LOCAL_RANK set. Every rank reads the same job record and dataset and makes the same seeded split; transformers
(through accelerate) shards each global batch across the ranks and all-reduces the gradients. Only rank 0 writes
the job record and publishes, so a job has one writer and one adapter whatever the number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """This process's place among the trainer processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """Read from the variables torchrun sets; a plain `python -m trainer` is rank 0 of 1."""
    return World(
        rank=int(os.environ.get("RANK", "0")),
        size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init() -> World:
    """Join the process group now (gloo on CPU, nccl on GPUs), before transformers would.

    The ranks must agree on things before the Trainer exists (who prepares the base model first), so the group is
    set up here; accelerate then finds it initialised and uses it."""
    here = world()
    if here.distributed:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(here.local_rank)
            dist.init_process_group(backend="nccl" if cuda else "gloo")
    return here


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block before the other ranks do: it prepares what they would otherwise race to write
    (the base model's local copy), and they find it done."""
    here = world()
    if not here.main:
        barrier()
    try:
        yield
    finally:
        if here.main:
            barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any: the ranks stop together, or one would wait forever for the
    others in the next gradient all-reduce."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    import torch

    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

