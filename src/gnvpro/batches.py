"""The data gnvpro.loop.fit reads: batch schedules (fixed_batches) and ``Batches``, a sequence
of (x, y) checked whole before the first step or a re-iterable (a DataLoader) read afresh each
epoch, each batch checked when drawn."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .validate import check_batch, check_real, describe

if TYPE_CHECKING:
    from .methods.base import Method

__all__ = ["MAX_BATCHES", "Batches", "fixed_batches"]

MAX_BATCHES = 10**6


def fixed_batches(x: Tensor, y: Tensor, n_batches: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """A seeded random partition of (x, y) into n_batches near-equal batches (the paper's fixed
    sub-batches); 1 <= n_batches <= len(x), an integer, checked (never clamped)."""
    n_batches = check_real("n_batches", n_batches, integer=True, low=1)
    seed = check_real("seed", seed, integer=True, low=0)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}: they must match")
    if n_batches > len(x):
        raise ValueError(f"n_batches={n_batches} exceeds the {len(x)} samples: every batch needs "
                         "at least one sample")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
    perm = perm.to(x.device)
    return [(x[idx], y[idx]) for idx in torch.tensor_split(perm, n_batches)]


def _check_source(batches: object) -> None:
    """``batches`` is a collection of (x, y) pairs with a length that can be read again."""
    if isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[0], Tensor):
        raise TypeError("batches must be a sequence of (x, y) pairs: pass [(x, y)] for "
                        "full-batch training")
    if isinstance(batches, Iterator) or not isinstance(batches, Sized) or \
            not (hasattr(batches, "__getitem__") or isinstance(batches, Iterable)) or \
            isinstance(batches, str | bytes | Tensor):
        raise TypeError(f"batches must be a sequence of (x, y) pairs with a length (a list, a "
                        f"tuple or a DataLoader; fit reads it afresh each epoch), got "
                        f"{describe(batches)}: pass list(...) of a finite iterable")
    if len(batches) > MAX_BATCHES:
        raise ValueError(f"batches has {len(batches)} batches, more than {MAX_BATCHES}: use "
                         "larger batches (gnvpro.batches.fixed_batches) or several fit calls")
    if len(batches) == 0:
        raise ValueError("batches is empty: give at least one (x, y) batch")


def _check_pair(method: Method, b: object, name: str, where: str, x0: Tensor | None
                ) -> tuple[Tensor, Tensor]:
    """One batch (``name``) checked for the model (types, shapes, dtype, device, widths, finite
    values, targets; samples shaped as x0's); ``where`` prefixes the errors."""
    if not (isinstance(b, tuple | list) and len(b) == 2):
        raise TypeError(f"{name} must be a pair (x, y), got {describe(b)}")
    check_batch(method.split, b[0], b[1], f"{where}x", f"{where}y")
    if x0 is not None and b[0].shape[1:] != x0.shape[1:]:
        raise ValueError(f"{where}x has samples of shape {tuple(b[0].shape[1:])} but "
                         f"batches[0] has {tuple(x0.shape[1:])}: they must match")
    try:
        method.loss.prepare_targets(b[1], method.split.n_outputs)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}y: {e}") from None
    return b[0], b[1]


def _check_batches(method: Method, batches: Sequence) -> list[tuple[Tensor, Tensor]]:
    """A sequence of batches as a list of (x, y), each checked for the model before anything
    is trained (the same tensors again are checked once)."""
    out = list(batches)
    seen: set[tuple[int, int]] = set()
    for i, b in enumerate(out):
        if isinstance(b, tuple | list) and len(b) == 2 and (id(b[0]), id(b[1])) in seen:
            continue  # the same tensors again: checked already
        where = "" if len(out) == 1 else f"batches[{i}]: "
        _check_pair(method, b, f"batches[{i}]", where, out[0][0] if i else None)
        seen.add((id(b[0]), id(b[1])))
    return [tuple(b) for b in out]  # type: ignore[misc]


class Batches:
    """fit's data: a sequence (checked whole up front, indexed each epoch) or a re-iterable
    with a length such as a DataLoader (iterated afresh each epoch, each batch checked when
    drawn, before the step on it)."""

    def __init__(self, method: Method, batches: object) -> None:
        _check_source(batches)
        self.method, self.source, self.n = method, batches, len(batches)  # type: ignore[arg-type]
        self.fixed = (_check_batches(method, batches)  # type: ignore[arg-type]
                      if hasattr(batches, "__getitem__") else None)
        self.x0: Tensor | None = None if self.fixed is None else self.fixed[0][0]

    def epoch(self, epoch: int, skip: int) -> Iterator[tuple[int, Tensor, Tensor]]:
        """(index, x, y) of one epoch from batch ``skip`` on."""
        if self.fixed is not None:
            for b in range(skip, self.n):
                yield b, *self.fixed[b]
            return
        for b, item in enumerate(iter(self.source)):  # type: ignore[call-overload]
            if b >= skip:
                name = f"batches[{b}] of epoch {epoch}"
                x, y = _check_pair(self.method, item, name, f"{name}: ", self.x0)
                self.x0 = x if self.x0 is None else self.x0
                yield b, x, y

    def default_n_samples(self, single: bool) -> int:
        """The training samples: the batches' sizes summed (a sequence), the loader's dataset
        length (a DataLoader), the batch's size (one batch)."""
        if self.fixed is not None:
            return sum(len(x) for x, _ in self.fixed) if not single else len(self.fixed[0][0])
        assert self.x0 is not None
        dataset = getattr(self.source, "dataset", None)
        if single or self.n == 1:
            return len(self.x0)
        if not isinstance(dataset, Sized):
            raise ValueError(f"n_samples is needed for {describe(self.source)}: give the number "
                             "of training samples (the work of a step on a batch of b samples "
                             "counts b / n_samples)")
        return len(dataset)
