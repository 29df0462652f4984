"""DistributedReducer on real torch.distributed process groups (gloo, spawned processes, a short
timeout so a hang fails in seconds): a batch sharded over 2 and 3 ranks, uneven shards and a
rank with one row, gives the one-process W*, Φ_red, ∇Φ_red and Gauss-Newton products (float64),
bitwise the same on every rank; ``all`` is a collective AND; and GNvpro / L-BFGS-VarPro given
the reducer follow the one-process trajectory."""

from __future__ import annotations

import gc
import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from process_group import in_group

from gnvpro import (
    DistributedReducer,
    GNvpro,
    GNvproConfig,
    LBFGSVarPro,
    ReducedObjective,
    make_loss,
    split_model,
)
from gnvpro.varpro import InnerOptions
from gnvpro_experiments.models import mlp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
DT = torch.float64
N = 30
TIGHT = InnerOptions(rtol=1e-13, atol=1e-13, max_iter=100)


def _problem(loss: str, c: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g, dtype=DT)
    y = (torch.randn(N, c, generator=g, dtype=DT) if loss == "least_squares"
         else torch.arange(N) % c if loss == "cross_entropy" else (torch.arange(N) % 2).to(DT))
    return mlp(3, [5, 5], c, activation="tanh", dtype=DT, generator=g), x, y


def _quantities(loss: str, c: int, rows: slice, reducer=None) -> dict:
    model, x, y = _problem(loss, c)
    obj = ReducedObjective(split_model(model, probe=x), make_loss(loss), x[rows], y[rows], 1e-3,
                           1e-4, reducer=reducer, inner=TIGHT)
    theta = obj.features.layout.flatten(obj.split.feature_params(), DT).detach()
    pt = obj.evaluate(theta)
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(1), dtype=DT)
    return {"value": torch.tensor(pt.value), "W": pt.W, "g": obj.gradient(pt),
            "Hv": obj.gn_operator(pt)(v)}


def _rows(rank: int, sizes: list[int]) -> slice:
    bounds = [0, *itertools.accumulate(sizes)]
    return slice(bounds[rank], bounds[rank + 1])


def _worker(rank: int, world: int, sizes: list[int], loss: str, c: int, out: str) -> None:
    reducer = DistributedReducer(sizes[rank])
    q = _quantities(loss, c, _rows(rank, sizes), reducer)
    q["n"] = torch.tensor(reducer.n)
    q["all"] = torch.tensor([reducer.all(True), reducer.all(rank != world - 1)])
    torch.save(q, f"{out}/rank{rank}.pt")


@pytest.mark.parametrize(("loss", "c", "sizes"), [
    ("least_squares", 4, [1, 29]), ("least_squares", 4, [10, 13, 7]),
    ("cross_entropy", 3, [13, 17]), ("logistic", 1, [9, 12, 9])])
def test_sharded_objective_equals_one_process(tmp_path, loss, c, sizes):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(in_group, args=(len(sizes), init, _worker, sizes, loss, c, str(tmp_path)),
             nprocs=len(sizes), join=True)
    ref = _quantities(loss, c, slice(0, N))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(sizes))]
    for q in ranks:
        assert int(q["n"]) == N
        assert q["all"].tolist() == [True, False]
        for key in ("value", "W", "g", "Hv"):
            assert torch.equal(q[key], ranks[0][key])  # every rank holds the same numbers
            scale = float(ref[key].abs().max())
            assert torch.allclose(q[key], ref[key], rtol=1e-10, atol=1e-12 * scale), key


def _trajectory(kind: str, rows: slice, reducer=None, steps: int = 20) -> torch.Tensor:
    """(Φ, work, radius or 0) after each of ``steps`` outer iterations on the rows ``rows``."""
    model, x, y = _problem("least_squares", 4)
    if kind == "lbfgs":
        opt = LBFGSVarPro(model, alpha_w=1e-3, alpha_theta=1e-4, reducer=reducer)
    else:
        config = GNvproConfig.trust_region() if kind == "tr" else GNvproConfig()
        opt = GNvpro(model, alpha_w=1e-3, alpha_theta=1e-4, config=config, reducer=reducer)
    out = []
    for _ in range(steps):
        opt.step(x[rows], y[rows])
        radius = opt.state.radius
        out.append([opt.current().value, opt.work, 0.0 if radius is None else radius])
    return torch.tensor(out, dtype=DT)


def _trajectory_worker(rank: int, world: int, sizes: list[int], kind: str, out: str) -> None:
    torch.save(_trajectory(kind, _rows(rank, sizes), DistributedReducer(sizes[rank])),
               f"{out}/rank{rank}.pt")


@pytest.mark.parametrize(("kind", "sizes"), [("tr", [14, 16]), ("tr", [10, 1, 19]),
                                             ("lbfgs", [14, 16]), ("tn", [10, 1, 19])])
def test_sharded_methods_follow_the_one_process_trajectory(tmp_path, kind, sizes):
    """GNvpro (trust region: 20 iterations) and L-BFGS-VarPro with a DistributedReducer: the
    same Φ, work units and radius as one process at every iteration (1e-8), bitwise the same on
    every rank. Truncated GN amplifies rounding (CG tolerances; see tests/test_chunked.py): its
    first iteration is held to 1e-8 with the same work, the rest only to rank agreement (its
    CG counts differ from one process's after about ten iterations)."""
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(in_group, args=(len(sizes), init, _trajectory_worker, sizes, kind, str(tmp_path)),
             nprocs=len(sizes), join=True)
    ref = _trajectory(kind, slice(0, N))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(sizes))]
    for t in ranks:
        assert torch.equal(t, ranks[0])
    t = ranks[0]
    upto = 1 if kind == "tn" else len(ref)
    assert torch.equal(t[:upto, 1], ref[:upto, 1])  # work units
    assert torch.allclose(t[:upto], ref[:upto], rtol=1e-8, atol=0.0)


def _outcome(out: str, rank: int, fn) -> None:
    """Write fn()'s text, or the ValueError it raised, to OUT/rankR.txt."""
    try:
        msg = fn()
    except ValueError as e:
        msg = str(e)
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(msg)


def _refusing_worker(rank: int, world: int, out: str) -> None:
    model, x, y = _problem("least_squares", 4)
    rows = _rows(rank, [15, N - 15])
    xr = x[rows].clone()
    if rank == 1:
        xr[0, 0] = float("nan")  # a bad input on one rank only
    _outcome(out, rank, lambda: ReducedObjective(
        split_model(model, probe=x), make_loss("least_squares"), xr, y[rows], 1e-3, 1e-4,
        reducer=DistributedReducer(len(xr))) and "accepted")


def test_a_bad_shard_on_one_rank_raises_on_every_rank(tmp_path):
    """A local input check that fails on one rank only raises there with its message and on the
    others with one that points to it: no rank runs on into a collective the others never
    reach (which would hang until the timeout)."""
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(in_group, args=(2, init, _refusing_worker, str(tmp_path)), nprocs=2, join=True)
    assert "another process refused" in (tmp_path / "rank0.txt").read_text()
    assert "NaN" in (tmp_path / "rank1.txt").read_text() or "finite" in (
        tmp_path / "rank1.txt").read_text()


def test_distributed_reducer_needs_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedReducer(3)


def _class_worker(rank: int, world: int, loss: str, labels: list, out: str) -> None:
    """Each rank holds the rows of one class (labels[rank]); Φ of the sharded objective, or the
    message it was refused with."""
    model, x, _ = _problem(loss, 3 if loss == "cross_entropy" else 1)
    rows = _rows(rank, [N // 2, N - N // 2])
    y = torch.full((rows.stop - rows.start,), labels[rank],
                   dtype=torch.int64 if loss == "cross_entropy" else DT)

    def value() -> str:
        obj = ReducedObjective(split_model(model, probe=x), make_loss(loss), x[rows], y, 1e-3,
                               1e-4, reducer=DistributedReducer(len(y)), inner=TIGHT)
        theta = obj.features.layout.flatten(obj.split.feature_params(), DT).detach()
        return repr(obj.evaluate(theta).value)

    _outcome(out, rank, value)


@pytest.mark.parametrize(("loss", "labels"), [("cross_entropy", [2, 0]), ("logistic", [1, 0]),
                                              ("cross_entropy", [1, 1])])
def test_a_shard_of_one_class_is_checked_over_all_ranks(tmp_path, loss, labels):
    """The two-class check counts the classes over every rank's rows: shards of one class each
    form a valid problem (Φ as one process on all rows); one class overall is refused on every
    rank with the one-process message."""
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(in_group, args=(2, init, _class_worker, loss, labels, str(tmp_path)), nprocs=2,
             join=True)
    got = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert got[0] == got[1]
    model, x, _ = _problem(loss, 3 if loss == "cross_entropy" else 1)
    y = torch.tensor([labels[0]] * (N // 2) + [labels[1]] * (N - N // 2),
                     dtype=torch.int64 if loss == "cross_entropy" else DT)
    if labels[0] == labels[1]:
        assert got[0].startswith(f"y: only one class ({labels[0]}) is present"), got[0]
        return
    obj = ReducedObjective(split_model(model, probe=x), make_loss(loss), x, y, 1e-3, 1e-4,
                           inner=TIGHT)
    theta = obj.features.layout.flatten(obj.split.feature_params(), DT).detach()
    assert float(got[0]) == pytest.approx(obj.evaluate(theta).value, rel=1e-10)


def _ill_posed(alpha: float):
    """Ẑ (30 × 6) whose last column repeats the first (rank 5: Cholesky fails at α_W = 0, the
    SVD fallback solves), or nearly (α_W = 1e-12: cond(Gram) far above 1e10)."""
    g = torch.Generator().manual_seed(3)
    Zh = torch.randn(N, 6, generator=g, dtype=DT)
    Zh[:, 5] = Zh[:, 0] + (0.0 if alpha == 0 else 1e-8 * Zh[:, 1])
    C = torch.randn(N, 3, generator=g, dtype=DT)
    V = torch.randn(3, 6, generator=g, dtype=DT)
    return Zh, C, V


def _svd_worker(rank: int, world: int, sizes: list[int], alpha: float, out: str) -> None:
    from gnvpro.inner.least_squares import solve_least_squares

    Zh, C, V = _ill_posed(alpha)
    rows = _rows(rank, sizes)
    sol = solve_least_squares(Zh[rows], C[rows], alpha, DistributedReducer(rows.stop - rows.start))
    torch.save({"W": sol.W, "HinvV": sol.hess_inv(V), "message": sol.message},
               f"{out}/rank{rank}.pt")


@pytest.mark.parametrize("alpha", [0.0, 1e-12])
@pytest.mark.parametrize("sizes", [[1, 29], [10, 13, 7]])
def test_the_svd_fallback_is_the_one_process_one_by_tsqr(tmp_path, alpha, sizes):
    """Least squares whose Gram matrix Cholesky refuses (α_W = 0, rank-deficient Ẑ) or distrusts
    (cond > 1e10): the fallback factors the rows of every rank together (TSQR), a rank with one
    row included, and gives one process's W* and H_W⁻¹ V on every rank."""
    from gnvpro.inner.least_squares import solve_least_squares
    from gnvpro.reduce import SampleReducer

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(in_group, args=(len(sizes), init, _svd_worker, sizes, alpha, str(tmp_path)),
             nprocs=len(sizes), join=True)
    Zh, C, V = _ill_posed(alpha)
    ref = solve_least_squares(Zh, C, alpha, SampleReducer(N))
    assert "SVD" in ref.message
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(sizes))]
    for q in ranks:
        assert "SVD" in q["message"]
        assert torch.equal(q["W"], ranks[0]["W"]) and torch.equal(q["HinvV"], ranks[0]["HinvV"])
        assert torch.allclose(q["W"], ref.W, rtol=1e-8, atol=1e-8 * float(ref.W.abs().max()))
        Hv = ref.hess_inv(V)
        assert torch.allclose(q["HinvV"], Hv, rtol=1e-6, atol=1e-6 * float(Hv.abs().max()))


class _SlowClock(GNvpro):
    """GNvpro whose clock on rank 1 jumps by 1000 s after its third iteration (one slow
    process)."""

    @property
    def seconds(self) -> float:
        late = dist.get_rank() == 1 and self.state is not None and self.state.iteration >= 3
        return super().seconds + (1000.0 if late else 0.0)


def _clock_worker(rank: int, world: int, out: str) -> None:
    from gnvpro import fit

    model, x, y = _problem("least_squares", 4)
    rows = _rows(rank, [14, 16])
    opt = _SlowClock(model, alpha_w=1e-3, alpha_theta=1e-4, reducer=DistributedReducer(
        rows.stop - rows.start))
    calls = []
    hook = (lambda h: calls.append(len(h.records))) if rank == 0 else None  # rank 0 saves
    hist = fit(opt, [(x[rows], y[rows])], max_iter=50, max_seconds=500.0, checkpoint=hook,
               checkpoint_every=0.0)
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(f"{hist.termination.name} {len(hist.records)} {calls}")


def test_a_local_clock_stops_every_rank_after_the_same_step(tmp_path):
    """max_seconds reads each process's own clock: the first process over it stops them all
    after the same step (no rank runs on into collectives the others left); the checkpoint
    timer is decided alike whether a rank holds a hook (rank 0 here) or not."""
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(in_group, args=(2, init, _clock_worker, str(tmp_path)), nprocs=2, join=True)
    got = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert got == ["MAX_SECONDS 3 [1, 2, 3]", "MAX_SECONDS 3 []"], got


def _first_order_run(optimizer: str, rows: slice, reducer=None, epochs: int = 4):
    """(Φ, L) after each of ``epochs`` epochs of ADAM / SGD on the rows ``rows``, the weights,
    and how many DistributedDataParallel wrappers are alive after them (with the method)."""
    from torch.nn.parallel import DistributedDataParallel

    from gnvpro import FirstOrder, FirstOrderConfig

    model, x, y = _problem("cross_entropy", 3)
    opt = FirstOrder(model, "cross_entropy", alpha_w=1e-3, alpha_theta=1e-4, reducer=reducer,
                     config=FirstOrderConfig(optimizer=optimizer, lr=3e-2, batch_size=7))
    out = []
    for _ in range(epochs):
        opt.step(x[rows], y[rows])
        it = opt.current()
        out.append([it.value, it.data_loss])
    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    return torch.tensor(out, dtype=DT), torch.cat([p.detach().reshape(-1)
                                                   for p in model.parameters()]), alive


def _first_order_worker(rank: int, world: int, sizes: list[int], optimizer: str, out: str
                        ) -> None:
    traj, weights, alive = _first_order_run(optimizer, _rows(rank, sizes),
                                            DistributedReducer(sizes[rank]))
    torch.save({"traj": traj, "weights": weights, "alive": alive}, f"{out}/rank{rank}.pt")


@pytest.mark.parametrize(("optimizer", "sizes"), [("adam", [14, 16]), ("sgd", [10, 1, 19])])
def test_sharded_adam_and_sgd_follow_the_one_process_epochs(tmp_path, optimizer, sizes):
    """ADAM / SGD with a DistributedReducer (DistributedDataParallel inside, mini-batches of 7
    drawn from all 30 rows by one shared permutation, a rank with one row): the one-process
    epochs, Φ and weights within 1e-10, ranks bitwise equal; no DDP wrapper outlives its epoch
    (one alive at destroy_process_group aborted 3 of 20 gloo runs at exit)."""
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(in_group, args=(len(sizes), init, _first_order_worker, sizes, optimizer,
                             str(tmp_path)), nprocs=len(sizes), join=True)
    ref_traj, ref_w, _ = _first_order_run(optimizer, slice(0, N))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(sizes))]
    assert [q["alive"] for q in ranks] == [0] * len(sizes)
    for q in ranks:
        assert torch.equal(q["traj"], ranks[0]["traj"])
        assert torch.equal(q["weights"], ranks[0]["weights"])
    assert torch.allclose(ranks[0]["traj"], ref_traj, rtol=1e-10, atol=0.0)
    assert torch.allclose(ranks[0]["weights"], ref_w, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ref_traj[0], ref_traj[-1], rtol=1e-3)  # it trained


VARIANTS = {"tn": GNvproConfig(), "lanczos": GNvproConfig.trust_region(),
            "steihaug": GNvproConfig.trust_region(descent={"kind": "steihaug"}),
            "lbfgs": GNvproConfig(descent={"kind": "lbfgs"})}


def _one_iteration(loss: str, rows: slice | torch.Tensor, reducer=None) -> torch.Tensor:
    """(Φ, ‖∇Φ‖, work) after one outer iteration of every variant (descent × search) on the
    rows ``rows`` (a slice, or a permutation of all rows)."""
    out = []
    for config in VARIANTS.values():
        model, x, y = _problem(loss, 3 if loss == "cross_entropy" else 1 if loss == "logistic"
                               else 4)
        opt = GNvpro(model, loss, alpha_w=1e-3, alpha_theta=1e-4, config=config, reducer=reducer)
        opt.step(x[rows], y[rows])
        out.append([opt.current().value, opt.state.grad_norm, opt.work])
    return torch.tensor(out, dtype=DT)


def _variants_worker(rank: int, world: int, sizes: list[int], loss: str, out: str) -> None:
    torch.save(_one_iteration(loss, _rows(rank, sizes), DistributedReducer(sizes[rank])),
               f"{out}/rank{rank}.pt")


@pytest.mark.parametrize(("loss", "sizes"), [("least_squares", [13, 17]),
                                             ("cross_entropy", [10, 1, 19]),
                                             ("logistic", [16, 14])])
def test_one_iteration_of_every_variant_is_the_one_process_one(tmp_path, loss, sizes):
    """Truncated GN, the Lanczos and Steihaug trust regions and L-BFGS, one outer iteration on
    2 and 3 ranks: Φ, ‖∇Φ‖ and work units of one process within 1e-10 (Lanczos, L-BFGS), or Φ
    and ‖∇Φ‖ within 100× the spread of one process whose rows are permuted (truncated CG
    amplifies the rounding of the sums' order: measured after one iteration, least squares,
    5e-9 for truncated GN and 1e-3 to 6e-3 for Steihaug, whose first radius is an unconstrained
    CG run's step), ranks bitwise equal."""
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(in_group, args=(len(sizes), init, _variants_worker, sizes, loss, str(tmp_path)),
             nprocs=len(sizes), join=True)
    ref = _one_iteration(loss, slice(0, N))
    spread = torch.stack([
        ((_one_iteration(loss, torch.randperm(N, generator=torch.Generator().manual_seed(k)))
          - ref) / ref).abs() for k in range(3)]).amax(0)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(sizes))]
    for t in ranks:
        assert torch.equal(t, ranks[0])
    rel = ((ranks[0] - ref) / ref).abs()
    # Lanczos (reorthogonalised) and L-BFGS: 1e-10 and the same work units
    assert (rel[[1, 3]] <= 1e-10).all() and torch.equal(ranks[0][[1, 3], 2], ref[[1, 3], 2])
    # truncated CG (TN, Steihaug): Φ and ‖∇Φ‖ within 100× the permutation spread; its CG
    # count, hence its work, may change with the rounding (Steihaug under MKL_CBWR=COMPATIBLE
    # and 2 threads: 79 against 75 work units on cross-entropy)
    assert (rel[[0, 2], :2] <= torch.clamp(100 * spread[[0, 2], :2], min=1e-10)).all(), (
        rel, spread)


def _empty_worker(rank: int, world: int, out: str) -> None:
    _outcome(out, rank, lambda: _quantities("cross_entropy", 3, _rows(rank, [0, N]),
                                            DistributedReducer([0, N][rank])) and "accepted")


def test_an_empty_shard_is_refused_on_every_rank(tmp_path):
    """A process without rows is refused (every process needs one) on every rank, with the
    reason on the empty one: no rank goes on alone."""
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(in_group, args=(2, init, _empty_worker, str(tmp_path)), nprocs=2, join=True)
    empty, full = ((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert "every process needs at least one row" in empty, empty
    assert "another process refused" in full, full
