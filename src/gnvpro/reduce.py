"""The sample reducer: the one place where sums over samples become averages.

The objective averages over the n samples (rows) of the training set,

    Φ = (1/n) Σ_i ℓ_i(s_i) + regularisers,

and every sample-dependent quantity is a sum over rows: the loss value Σ_i ℓ_i, the θ-gradient
J_Zᵀ(G W̃), the normal equations ẐᵀẐ and CᵀẐ, the products H_S[·]ᵀẐ of the inner Newton solve
and of the Gauss-Newton operator. The losses (gnvpro.losses) return such sums over the rows
they see; the solvers pass each sum through one ``SampleReducer``:

    sum(t)   = Σ_processes t          (the local row sums of all processes; t itself here)
    sums(*t) = (Σ t_1, Σ t_2, …)      (several sums in one reduction)
    all(b)   = ∧_processes b          (a check every process must pass, e.g. finite features)
    stack(t) = [t_0; t_1; …]          (the processes' equal-shape t in process order: TSQR)
    rows(t)  = [t_0; t_1; …]          (the processes' rows, any counts: global metrics)
    mean(t)  = sum(t) / n             (n: the GLOBAL number of samples)
    scale(t) = t / n                  (per-row quantities, no communication: G = (S − C)/n)

This is the seam for data-parallel training and mini-batch accumulation: a subclass whose
``sum`` all-reduces t over processes (torch.distributed.all_reduce, which works in place)
makes every solver average over the union of the processes' rows without further change.
"""

from __future__ import annotations

import operator
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["DistributedReducer", "SampleReducer", "resolve_reducer"]

T = TypeVar("T", Tensor, float)


class SampleReducer:
    """Averages over ``n`` samples (the global row count): ``sum``, ``mean`` and ``scale``.

    Single process: ``sum`` is the identity, so ``mean(t) = t / n`` and ``scale(t) = t / n``,
    the same floating-point operation the solvers perform at the same place.
    """

    def __init__(self, n: int) -> None:
        try:
            k = operator.index(n)  # int, numpy and 0-d torch integers; not floats
        except TypeError:
            k = None
        if isinstance(n, bool) or k is None or k < 1:
            raise ValueError(
                f"the number of samples n must be a positive int, got {n!r} ({type(n).__name__})"
            )
        self.n = int(k)

    def sum(self, t: Tensor) -> Tensor:
        """Σ over all processes of t, a local sum over rows (one process: t itself).

        May reduce t in place (as all_reduce does): pass a temporary, use the result."""
        return t

    def all(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process (one process: flag itself). Every local
        check that changes what the solver does goes through here, so that all processes take
        the same branch (and their collectives stay in step)."""
        return bool(flag)

    def sums(self, *ts: Tensor) -> tuple[Tensor, ...]:
        """sum() of each of ``ts`` (one dtype and device) in one reduction: one call where the
        sums are all-reduced, not one per tensor (one process: ts themselves)."""
        if type(self).sum is SampleReducer.sum:  # the identity
            return ts
        flat = self.sum(torch.cat([t.reshape(-1) for t in ts]))
        return tuple(f.view_as(t) for f, t in zip(flat.split([t.numel() for t in ts]), ts,
                                                   strict=True))

    parts: int = 1  # the processes whose rows the sums run over
    part: int = 0  # this process's place among them

    def stack(self, t: Tensor) -> Tensor:
        """The processes' tensors t (one shape on all) stacked along dim 0 in process order
        (one process: t itself)."""
        return t

    def rows(self, t: Tensor) -> Tensor:
        """Every process's rows of t (a per-row array of its shard; the counts may differ)
        concatenated in process order: the whole array, on every process (one process: t)."""
        if self.parts == 1:
            return t
        counts = [int(k) for k in self.stack(torch.tensor([len(t)], device=t.device))]
        padded = t.detach().new_zeros((max(counts), *t.shape[1:]))
        padded[: len(t)] = t.detach()
        return torch.cat([p[:k] for p, k in zip(self.stack(padded[None]), counts, strict=True)])

    def mean(self, t: Tensor, inplace: bool = False) -> Tensor:
        """sum(t) / n: the average over all n samples of a local sum over rows."""
        s = self.sum(t)
        return s.div_(self.n) if inplace else s / self.n

    def scale(self, t: T, inplace: bool = False) -> T:
        """t / n for per-row quantities (or a scalar factor such as 1/n): no communication."""
        if inplace and isinstance(t, Tensor):
            return t.div_(self.n)
        return t / self.n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n})"


class DistributedReducer(SampleReducer):
    """The reducer of one process of a torch.distributed process group holding ``n_local`` rows:
    n = Σ_ranks n_local (one all_reduce at construction), ``sum`` = all_reduce(SUM) and ``all``
    = all_reduce(MIN) over ``group`` (gloo on CPU, NCCL on CUDA; the group must be initialised).

    Every rank must make the same calls in the same order (the solvers do: their decisions
    follow from reduced values). A rank may hold no rows (n_local = 0) as long as n ≥ 1.
    """

    def __init__(self, n_local: int, group: Any = None, device: torch.device | str = "cpu"
                 ) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistributedReducer needs an initialised process group: call "
                               "torch.distributed.init_process_group first (torchrun sets it up)")
        self._dist, self.group, self.device = dist, group, torch.device(device)
        k = operator.index(n_local)
        if k < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        t = torch.tensor([k], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, group=group)
        super().__init__(int(t.item()))
        self.parts, self.part = dist.get_world_size(group), dist.get_rank(group)

    def sum(self, t: Tensor) -> Tensor:
        """Σ over the group's ranks of t (all_reduce on a copy: t itself is left alone)."""
        out = t.detach().clone().contiguous()
        self._dist.all_reduce(out, group=self.group)
        return out

    def stack(self, t: Tensor) -> Tensor:
        """all_gather of t (the same shape on every rank), concatenated in rank order."""
        t = t.detach().contiguous()
        parts = [torch.empty_like(t) for _ in range(self.parts)]
        self._dist.all_gather(parts, t, group=self.group)
        return torch.cat(parts)

    def all(self, flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MIN, group=self.group)
        return bool(t.item())


def resolve_reducer(reducer: SampleReducer | None, rows: int) -> SampleReducer:
    """``reducer``, or the mean over the ``rows`` local rows when None; a reducer must average
    over at least as many samples as the rows it is given (ValueError)."""
    if reducer is None:
        return SampleReducer(rows)
    if not isinstance(reducer, SampleReducer):
        raise TypeError(f"reducer must be a SampleReducer, got {type(reducer).__name__}")
    if reducer.n < rows:
        raise ValueError(
            f"the reducer averages over n = {reducer.n} samples, fewer than the {rows} rows "
            f"of this batch"
        )
    return reducer
