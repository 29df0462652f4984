"""Intra-op thread count: one thread for small networks, where more only add overhead.

A Gauss-Newton product on a few-hundred-sample MLP is a few dozen tiny kernels; torch's thread
pool then costs more than it saves, and with another process on the machine it oversubscribes
the cores (measured: 39 s instead of 1.4 s for a CDR run with two processes on 2 cores).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["SMALL_PROBLEM", "auto_threads", "intra_op_threads"]

SMALL_PROBLEM = 1e8  # rows × parameters below which one thread is used


def auto_threads(n_rows: int, n_params: int, device: torch.device | str = "cpu") -> int | None:
    """1 for a small CPU problem (n_rows·n_params < SMALL_PROBLEM), else None (torch's own).
    n_params counts the head too: with many outputs (DCR: 882) the W-side products dominate."""
    if torch.device(device).type != "cpu":
        return None
    return 1 if n_rows * n_params < SMALL_PROBLEM else None


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with torch.set_num_threads(n) (nothing when n is None or already set)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
