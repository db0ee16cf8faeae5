"""Several processes running one recipe (launched by torchrun, accelerate or `recipe apply --nproc`).

Every rank runs every stage. Only rank 0 writes artifacts and reports; the
evaluation set is split across ranks and the predictions gathered, so each
example is evaluated exactly once; training is data-parallel through accelerate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """How many processes the launcher started (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_ranks(device) -> Ranks:
    """Join the process group the launcher set up (gloo on CPU, nccl on GPU), if any."""
    if launched_world_size() <= 1:
        return Ranks()
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")
    return Ranks(state.process_index, state.num_processes)


def current_ranks() -> Ranks:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    import torch.distributed as dist

    ranks = current_ranks()
    if not ranks.distributed:
        return [obj]
    out = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    import torch.distributed as dist

    if current_ranks().distributed:
        dist.barrier()
