"""The sample reducer: unit tests, and the property data-parallel training relies on.

Two half-batches whose reducers share the global n and all-reduce their sums (two threads and a
barrier stand in for torch.distributed) reproduce the full batch's W*, Φ_red, gradient and
Gauss-Newton products, for every loss and for the joint problem (float64, tight tolerances).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from gnvpro import ReducedObjective, make_loss, split_model
from gnvpro.inner import solve_least_squares, solve_newton
from gnvpro.joint import JointProblem
from gnvpro.metrics import prediction_metrics
from gnvpro.reduce import SampleReducer, resolve_reducer
from gnvpro.varpro import InnerOptions
from gnvpro_experiments.models import mlp

DT = torch.float64
TIGHT = InnerOptions(rtol=1e-13, atol=1e-13, max_iter=100)


# ---------------------------------------------------------------------------- unit tests
def test_single_process_reducer_is_division_by_n() -> None:
    r = SampleReducer(7)
    t = torch.randn(3, 4, dtype=DT)
    assert r.sum(t) is t
    assert torch.equal(r.mean(t), t / 7) and torch.equal(r.scale(t), t / 7)
    assert r.scale(1.0) == 1.0 / 7
    u = t.clone()
    assert r.scale(u, inplace=True) is u and torch.equal(u, t / 7)
    u = t.clone()
    assert r.mean(u, inplace=True) is u and torch.equal(u, t / 7)
    assert r.n == 7 and repr(r) == "SampleReducer(n=7)"
    assert SampleReducer(np.int64(3)).n == 3 and type(SampleReducer(np.int64(3)).n) is int
    assert SampleReducer(torch.tensor(5)).n == 5


@pytest.mark.parametrize("bad", [0, -2, 2.0, 2.5, True, "3", None, torch.tensor(2.0)])
def test_reducer_needs_a_positive_int(bad: Any) -> None:
    with pytest.raises(ValueError, match="positive int"):
        SampleReducer(bad)


def test_resolve_reducer() -> None:
    assert resolve_reducer(None, 5).n == 5
    r = SampleReducer(10)
    assert resolve_reducer(r, 4) is r
    with pytest.raises(ValueError, match="n = 3 samples, fewer than the 4 rows"):
        resolve_reducer(SampleReducer(3), 4)
    with pytest.raises(TypeError, match="SampleReducer"):
        resolve_reducer(3, 4)  # type: ignore[arg-type]


# --------------------------------------------------------------- a simulated process group
class _Group:
    """An all-reduce among `world` threads: the sum of every rank's tensor, in rank order, so
    that all ranks see bit-identical results (as an all-reduce does)."""

    def __init__(self, world: int) -> None:
        self.slots: list[torch.Tensor | None] = [None] * world
        self.barrier = threading.Barrier(world, timeout=120)

    def all_reduce(self, rank: int, t: torch.Tensor) -> torch.Tensor:
        self.slots[rank] = t.clone()
        self.barrier.wait()
        total = self.slots[0].clone()
        for s in self.slots[1:]:
            total += s
        self.barrier.wait()  # all have read the slots before any rank writes again
        return total


class _AllReduceReducer(SampleReducer):
    """The seam in use: ``sum`` all-reduces over the group (torch.distributed stand-in)."""

    def __init__(self, n: int, group: _Group, rank: int) -> None:
        super().__init__(n)
        self.group, self.rank, self.calls = group, rank, 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.group.all_reduce(self.rank, t)


def _parallel(parts: list[Any], n: int, fn: Callable[[Any, SampleReducer], Any]) -> list[Any]:
    """fn(part, reducer) on every part in its own thread, the reducers sharing the global n."""
    group = _Group(len(parts))
    reducers = [_AllReduceReducer(n, group, k) for k in range(len(parts))]
    results: list[Any] = [None] * len(parts)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            results[k] = fn(parts[k], reducers[k])
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(parts))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    assert all(r.calls > 0 for r in reducers) and len({r.calls for r in reducers}) == 1
    return results


def _data(loss: str, c: int, n: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=DT)
    if loss == "least_squares":
        y = torch.randn(n, c, generator=gen, dtype=DT)
    else:  # every class in both halves
        y = (torch.arange(n) * 7 + torch.randint(0, 5, (n,), generator=gen)) % max(c, 2)
    model = mlp(3, [5, 4], c, activation="tanh", dtype=DT, generator=gen)
    return split_model(model, probe=x), x, y


def _own(split):
    """A process's own copy of the model (threads must not share one: functional_call swaps
    the module's parameters while it runs)."""
    return split_model(copy.deepcopy(split.model))


def _halves(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    k = 17  # unequal parts
    return [(x[:k], y[:k]), (x[k:], y[k:])]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-12) -> None:
    err = float((torch.as_tensor(a) - torch.as_tensor(b)).norm())
    assert err <= rtol * float(torch.as_tensor(b).norm()), (err, float(torch.as_tensor(b).norm()))


# (loss, c, α_W): least squares with the general (p > 2c) and the Gram (p ≤ 2c) GN product
CASES = [("least_squares", 2, 1e-3), ("least_squares", 6, 1e-3), ("cross_entropy", 3, 1e-2),
         ("logistic", 1, 1e-3)]


@pytest.mark.parametrize("jacobian", ["full", "kaufman"])
@pytest.mark.parametrize(("loss", "c", "alpha_w"), CASES, ids=[f"{a}{b}" for a, b, _ in CASES])
def test_half_batches_with_shared_reducer_equal_the_full_batch(loss, c, alpha_w, jacobian):
    split, x, y = _data(loss, c)
    kw = dict(jacobian=jacobian, inner=TIGHT)
    full = ReducedObjective(split, make_loss(loss), x, y, alpha_w, 1e-3, **kw)
    th = full.features.layout.flatten(split.feature_params(), DT).detach()
    vs = torch.randn(2, th.numel(), generator=torch.Generator().manual_seed(1), dtype=DT)
    pt = full.evaluate(th)
    jac = full.jacobian(pt)
    ref = (pt.value, pt.loss, pt.W, full.gradient(pt), [jac.gauss_newton(v) for v in vs])

    def part(xy, reducer):
        obj = ReducedObjective(_own(split), make_loss(loss), *xy, alpha_w, 1e-3, reducer=reducer,
                               **kw)
        p = obj.evaluate(th)
        J = obj.jacobian(p)
        return p.value, p.loss, p.W, obj.gradient(p), [J.gauss_newton(v) for v in vs]

    for got in _parallel(_halves(x, y), len(x), part):
        assert got[0] == pytest.approx(ref[0], rel=1e-13)
        assert got[1] == pytest.approx(ref[1], rel=1e-13)
        _close(got[2], ref[2], 1e-11)
        _close(got[3], ref[3], 1e-10)
        for a, b in zip(got[4], ref[4], strict=True):
            _close(a, b, 1e-10)


@pytest.mark.parametrize("coupled", [True, False])
@pytest.mark.parametrize(("loss", "c"), [("least_squares", 2), ("least_squares", 6),
                                         ("cross_entropy", 3)])
def test_joint_problem_half_batches_equal_the_full_batch(loss, c, coupled):
    split, x, y = _data(loss, c, seed=2)
    full = JointProblem(split, make_loss(loss), x, y, 1e-2, 1e-3, coupled=coupled)
    gen = torch.Generator().manual_seed(3)
    th = full.features.layout.flatten(split.feature_params(), DT).detach()
    z = full.pack(th, torch.randn(full.w_shape, generator=gen, dtype=DT))
    v = torch.randn(z.shape, generator=gen, dtype=DT)
    pt = full.evaluate(z)
    ref = (pt.value, full.gradient(pt), full.gn_operator(pt)(v))

    def part(xy, reducer):
        prob = JointProblem(_own(split), make_loss(loss), *xy, 1e-2, 1e-3, coupled=coupled,
                            reducer=reducer)
        p = prob.evaluate(z)
        return p.value, prob.gradient(p), prob.gn_operator(p)(v)

    for got in _parallel(_halves(x, y), len(x), part):
        assert got[0] == pytest.approx(ref[0], rel=1e-13)
        _close(got[1], ref[1])
        _close(got[2], ref[2])


class _Recording(SampleReducer):
    """Records every local sum it is given (single process)."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.seen: list[torch.Tensor] = []

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(t.clone())
        return t


@pytest.mark.parametrize("name", ["least_squares", "cross_entropy"])
def test_inner_normal_equations_sum_over_halves(name):
    """The local sums the inner solvers reduce (least squares: ẐᵀẐ, CᵀẐ; Newton: its gradients
    and H_W products) add up over the halves to the full batch's."""
    gen = torch.Generator().manual_seed(4)
    Zh = torch.cat([torch.randn(30, 4, generator=gen, dtype=DT), torch.ones(30, 1, dtype=DT)], 1)
    loss = make_loss(name)
    y = torch.randn(30, 2, generator=gen, dtype=DT) if name == "least_squares" else \
        torch.arange(30) % 3
    C = loss.prepare_targets(y, 2 if name == "least_squares" else 3).to(DT)
    if name == "least_squares":
        rec = [_Recording(30) for _ in range(3)]
        solve_least_squares(Zh, C, 1e-3, rec[0])
        solve_least_squares(Zh[:12], C[:12], 1e-3, rec[1])
        solve_least_squares(Zh[12:], C[12:], 1e-3, rec[2])
        assert len(rec[0].seen) == 2  # ẐᵀẐ and CᵀẐ
        for full, a, b in zip(rec[0].seen, rec[1].seen, rec[2].seen, strict=True):
            _close(a + b, full, 1e-14)
        torch.testing.assert_close(rec[0].seen[0], Zh.T @ Zh, rtol=0, atol=0)
    # whole solves: the two halves with an all-reducing reducer give the full W* and H_W⁻¹
    solve = solve_least_squares if name == "least_squares" else \
        (lambda Z, Cb, a, r: solve_newton(loss, Z, Cb, a, r, rtol=1e-13, atol=1e-13, dense_max=0))
    ref = solve(Zh, C, 1e-3, SampleReducer(30))
    V = torch.randn(ref.W.shape, generator=gen, dtype=DT)
    parts = [(Zh[:12], C[:12]), (Zh[12:], C[12:])]
    for W, HV in _parallel(parts, 30, lambda zc, r: (lambda s: (s.W, s.hess_inv(V)))(
            solve(*zc, 1e-3, r))):
        _close(W, ref.W, 1e-10)
        _close(HV, ref.hess_inv(V), 1e-9)


# --------------------------------------------------------------- n = 2·len(x) on one batch
@pytest.mark.parametrize(("loss", "c", "alpha_w"), CASES, ids=[f"{a}{b}" for a, b, _ in CASES])
def test_reducer_of_twice_the_rows_halves_the_data_term(loss, c, alpha_w):
    """Φ with n = 2·len(x) and (α_W, α_θ) is ½ Φ with n = len(x) and (2α_W, 2α_θ): same W*,
    half the value, gradient and Gauss-Newton products."""
    split, x, y = _data(loss, c, seed=5)
    a_t = 1e-3
    half = ReducedObjective(split, make_loss(loss), x, y, alpha_w, a_t, inner=TIGHT,
                            reducer=SampleReducer(2 * len(x)))
    ref = ReducedObjective(split, make_loss(loss), x, y, 2 * alpha_w, 2 * a_t, inner=TIGHT)
    th = ref.features.layout.flatten(split.feature_params(), DT).detach()
    v = torch.randn(th.shape, generator=torch.Generator().manual_seed(6), dtype=DT)
    ph, pr = half.evaluate(th), ref.evaluate(th)
    _close(ph.W, pr.W, 1e-10)
    assert ph.value == pytest.approx(0.5 * pr.value, rel=1e-12)
    assert ph.loss == pytest.approx(0.5 * pr.loss, rel=1e-12)
    _close(half.gradient(ph), 0.5 * ref.gradient(pr), 1e-10)
    _close(half.gn_operator(ph)(v), 0.5 * ref.gn_operator(pr)(v), 1e-10)
    m_half = prediction_metrics(half.loss, ph.S, y, c, reducer=SampleReducer(2 * len(x)))
    m_ref = prediction_metrics(ref.loss, ph.S, y, c)
    assert m_half["loss"] == pytest.approx(0.5 * m_ref["loss"], rel=1e-14)
    assert m_ref["loss"] == pytest.approx(2 * ph.loss, rel=1e-12)


def test_objectives_refuse_a_reducer_over_fewer_samples():
    split, x, y = _data("least_squares", 2)
    with pytest.raises(ValueError, match="fewer than the 40 rows"):
        ReducedObjective(split, make_loss("least_squares"), x, y, 1e-3, 1e-3,
                         reducer=SampleReducer(39))
    with pytest.raises(ValueError, match="fewer than the 40 rows"):
        JointProblem(split, make_loss("least_squares"), x, y, 1e-3, 1e-3,
                     reducer=SampleReducer(10))
    obj = ReducedObjective(split, make_loss("least_squares"), x, y, 1e-3, 1e-3)
    assert obj.reducer.n == 40 and type(obj.reducer) is SampleReducer
