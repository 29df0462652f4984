"""A checkpoint written by a data-parallel run resumes on another number of processes: the
optimiser state is replicated (every rank holds the same θ, W, radius, basis, pairs), rank 0
writes it, and a run on M processes (or one) continues the N-process trajectory within rounding
(gloo, spawned processes, a short timeout)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from process_group import in_group

from gnvpro import DistributedReducer, GNvpro, GNvproConfig, load_checkpoint, save_checkpoint
from gnvpro_experiments.models import mlp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
DT = torch.float64
N, BEFORE, AFTER = 301, 6, 6  # 301 rows: another split changes Φ in its last bits


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g, dtype=DT)
    y = torch.randn(N, 4, generator=g, dtype=DT)
    return mlp(3, [5, 5], 4, activation="tanh", dtype=DT, generator=g), x, y


def _rows(rank: int, world: int) -> slice:
    sizes = [len(r) for r in torch.tensor_split(torch.arange(N), world)]
    bounds = [0, *itertools.accumulate(sizes)]
    return slice(bounds[rank], bounds[rank + 1])


def _run(rank: int, world: int, out: str, steps: int, load: str | None, save: str | None
         ) -> None:
    """``steps`` trust-region iterations on this rank's rows (after loading ``load``); rank 0
    saves the checkpoint ``save`` and the (Φ, work, radius) trajectory."""
    model, x, y = _problem()
    rows = _rows(rank, world) if world > 1 else slice(0, N)
    reducer = DistributedReducer(rows.stop - rows.start) if world > 1 else None
    opt = GNvpro(model, alpha_w=1e-3, alpha_theta=1e-4, config=GNvproConfig.trust_region(),
                 reducer=reducer)
    if load:
        load_checkpoint(load, model, opt)
    traj = []
    for _ in range(steps):
        opt.step(x[rows], y[rows])
        traj.append([opt.current().value, opt.work, opt.state.radius])
    if rank == 0:
        torch.save(torch.tensor(traj, dtype=DT), f"{out}/traj-{world}-{steps}-{bool(load)}.pt")
        if save:
            save_checkpoint(save, model, opt)


def _launch(tmp_path, tag: str, world: int, *args) -> None:
    if world == 1:
        _run(0, 1, *args)
        return
    init = f"file://{tmp_path / ('rendezvous-' + tag)}"
    mp.spawn(in_group, args=(world, init, _run, *args), nprocs=world, join=True)


@pytest.mark.parametrize(("n", "m"), [(2, 3), (3, 1)])
def test_a_checkpoint_of_n_processes_resumes_on_m(tmp_path, n, m):
    out, ckpt = str(tmp_path), str(tmp_path / "ckpt.pt")
    _launch(tmp_path, "full", n, out, BEFORE + AFTER, None, None)  # uninterrupted
    _launch(tmp_path, "first", n, out, BEFORE, None, ckpt)  # killed after BEFORE steps
    _launch(tmp_path, "rest", m, out, AFTER, ckpt, None)  # resumed on m processes
    full = torch.load(tmp_path / f"traj-{n}-{BEFORE + AFTER}-False.pt")
    first = torch.load(tmp_path / f"traj-{n}-{BEFORE}-False.pt")
    rest = torch.load(tmp_path / f"traj-{m}-{AFTER}-True.pt")
    assert torch.equal(first, full[:BEFORE])  # the same processes: bit for bit
    assert torch.equal(rest[:, 1], full[BEFORE:, 1])  # the same work units: no fresh start
    rel = ((rest - full[BEFORE:]).abs() / full[BEFORE:].abs()).max()
    assert rel <= 1e-8, float(rel)
