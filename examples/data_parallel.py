"""GNvpro data-parallel over torch.distributed: each process holds a shard of the rows, the
objective's sums over samples are all-reduced (gnvpro.DistributedReducer), and every process
takes the same steps. Imports only torch and gnvpro.

    torchrun --standalone --nproc_per_node=2 examples/data_parallel.py
    python examples/data_parallel.py            # spawns 2 local gloo processes itself

On several machines, torchrun's own rendezvous (on every node):
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d \\
             --rdzv-endpoint=HOST:29500 examples/data_parallel.py

The full batch is averaged over all processes' rows (n = Σ ranks' rows), so the iterates are
those of one process on the whole data, up to the rounding of the sums' order.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gnvpro

N, STEPS = 4000, 10


def shard(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows of a smooth regression (every rank draws the same data, keeps its part;
    a real program reads only its shard)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, 4, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.stack([torch.sin(3 * x[:, 0]) * x[:, 1], x[:, 2] * x[:, 3]], dim=1)
    rows = torch.tensor_split(torch.arange(N), world)[rank]
    return x[rows], y[rows]


def train() -> float:
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = shard(rank, world)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 2)).double()
    opt = gnvpro.GNvpro(model, alpha_w=1e-8, alpha_theta=1e-8,
                        config=gnvpro.GNvproConfig.trust_region(),
                        reducer=gnvpro.DistributedReducer(len(x)))
    for k in range(STEPS):
        opt.step(x, y)
        if rank == 0:  # rank 0 alone prints (and would write files)
            print(f"iteration {k + 1}: Φ = {opt.current().value:.12e} (work {opt.work:g})")
    return opt.current().value


def _spawned(rank: int, world: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        train()
    finally:
        dist.destroy_process_group()


def main() -> None:
    if "RANK" in os.environ:  # launched by torchrun: it set up the rendezvous
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
        try:
            train()
        finally:
            dist.destroy_process_group()
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_spawned, args=(2, f"file://{tmp}/rendezvous"), nprocs=2, join=True)


if __name__ == "__main__":
    main()
