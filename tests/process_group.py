"""A spawned worker's process group for the data-parallel tests: gloo, a short timeout so a
hang fails in seconds."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import torch.distributed as dist


def in_group(rank: int, world: int, init: str, work: Callable, *args: object) -> None:
    """work(rank, world, *args) in a gloo process group of ``world`` ranks (30 s timeout)."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    try:
        work(rank, world, *args)
    finally:
        dist.destroy_process_group()
