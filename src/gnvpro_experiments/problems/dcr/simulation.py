"""The DCR survey: mesh and electrodes, the conductivity model, and the forward simulation."""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu
from scipy.special import expit
from tqdm import tqdm

from gnvpro.progress import on_terminal

from .config import (
    N_PARAMS,
    PARAM_NAMES,
    DCRConfig,
)
from .finite_volume import (
    Mesh2D,
    _faces,
    _pin,
    assemble_operator,
)

# --------------------------------------------------------------------------------------------
# the DCR survey: mesh, electrodes, model
# --------------------------------------------------------------------------------------------


def _padding(h: float, n: int, factor: float) -> np.ndarray:
    return h * factor ** np.arange(1, n + 1, dtype=np.float64)


def build_mesh(config: DCRConfig | None = None) -> Mesh2D:
    """The survey mesh: a uniform core under the electrode line, geometrically padded.

    Core: 2 (n_electrodes - 1) + 1 cells of width cell_size across, centred on x = 0 (so every
    electrode is at a cell centre of the top row), and core_depth_cells cells down; n_pad_x
    cells growing by pad_factor on either side and n_pad_z below.
    """
    cfg = config or DCRConfig()
    h = cfg.cell_size
    n_core_x = 2 * (cfg.n_electrodes - 1) + 1
    pad_x = _padding(h, cfg.n_pad_x, cfg.pad_factor)
    hx = np.concatenate([pad_x[::-1], np.full(n_core_x, h), pad_x])
    hz = np.concatenate(
        [np.full(cfg.core_depth_cells, h), _padding(h, cfg.n_pad_z, cfg.pad_factor)]
    )
    x0 = -0.5 * n_core_x * h - pad_x.sum()
    return Mesh2D(hx, hz, x0=x0, z0=0.0)


def electrode_layout(config: DCRConfig | None = None) -> dict[str, np.ndarray]:
    """Electrode positions (x, m) and the cell indices (top row) of all dipoles.

    Returns a dict with
        receiver_x (n_electrodes,): x_j = (j - (n_electrodes - 1) / 2) * electrode_spacing;
        current_x (n_electrodes - 1,): x_j + electrode_spacing / 2;
        source_x (n_sources, 2): (A, B) of dipole k = (-(s/2 + k s), +(s/2 + k s)), s the spacing;
        receiver_dipole_x (n_receivers, 2): (M, N) = (x_j, x_{j+1});
        source_cells (n_sources, 2), receiver_cells (n_receivers, 2): cell indices in build_mesh.
    The measurement for source k and receiver j is d[k * n_receivers + j] = u_k(M_j) - u_k(N_j).
    """
    cfg = config or DCRConfig()
    ne, s = cfg.n_electrodes, cfg.electrode_spacing
    ns = cfg.n_sources
    rec_x = (np.arange(ne) - (ne - 1) / 2) * s
    cur_x = rec_x[:-1] + s / 2
    k = np.arange(ns)
    a_idx, b_idx = ns - 1 - k, ns + k
    # core cell 2j is receiver electrode j, core cell 2j + 1 is current electrode j
    rec_cells = cfg.n_pad_x + 2 * np.arange(ne)
    cur_cells = cfg.n_pad_x + 2 * np.arange(ne - 1) + 1
    return {
        "receiver_x": rec_x,
        "current_x": cur_x,
        "source_x": np.stack([cur_x[a_idx], cur_x[b_idx]], axis=1),
        "receiver_dipole_x": np.stack([rec_x[:-1], rec_x[1:]], axis=1),
        "source_cells": np.stack([cur_cells[a_idx], cur_cells[b_idx]], axis=1),
        "receiver_cells": np.stack([rec_cells[:-1], rec_cells[1:]], axis=1),
    }


def log_conductivity(y: np.ndarray, mesh: Mesh2D, config: DCRConfig | None = None) -> np.ndarray:
    """log m = log(sigma_background) + y_0 * expit((R - r) / w), r = |(x, z) - (y_2, y_1)|.

    Args:
        y: (3,) = (log-conductivity contrast, depth of the disc's centre, its x position).
        mesh: the mesh (evaluated at cell centres).
        config: supplies sigma_background, R = anomaly_radius and w = edge_width.

    Returns:
        (n_cells,) natural-log conductivity.
    """
    cfg = config or DCRConfig()
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (N_PARAMS,):
        raise ValueError(f"y must have shape ({N_PARAMS},), got {y.shape}")
    xc, zc = mesh.cell_centres()
    r = np.hypot(xc - y[2], zc - y[1])
    return np.log(cfg.sigma_background) + y[0] * expit((cfg.anomaly_radius - r) / cfg.edge_width)


def forward_operator(
    y: np.ndarray, config: DCRConfig | None = None
) -> tuple[sp.csc_matrix, Mesh2D]:
    """(A(m(y)), mesh): the (singular, un-pinned) operator of :func:`assemble_operator` for the
    conductivity m = exp(log_conductivity(y)) on the survey mesh :func:`build_mesh` (config)."""
    cfg = config or DCRConfig()
    mesh = build_mesh(cfg)
    return assemble_operator(np.exp(log_conductivity(y, mesh, cfg)), mesh), mesh


class _Simulator:
    """Per-config precomputation: the sparsity pattern of the pinned operator in a fixed
    fill-reducing order, a sparse map from face conductances to its CSC data, the source
    right-hand sides and receiver rows in that order. One splu per sample."""

    def __init__(self, cfg: DCRConfig) -> None:
        self.cfg = cfg
        mesh = build_mesh(cfg)
        self.mesh = mesh
        n = mesh.n_cells
        faces = _faces(mesh)
        self.faces = faces
        self.geom = faces.length / faces.dist
        self.pin = n - 1
        self.xc, self.zc = mesh.cell_centres()
        # fill-reducing order from the background operator (the pattern never changes)
        A_bg = _pin(assemble_operator(np.full(n, cfg.sigma_background), mesh), self.pin)
        perm = splu(A_bg, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True}).perm_c
        self.perm = perm  # new index of old cell i is perm[i]
        L, R = perm[faces.left], perm[faces.right]
        nf = faces.n
        rows = np.concatenate([L, R, L, R])
        cols = np.concatenate([L, R, R, L])
        pattern = sp.csc_matrix((np.ones(4 * nf), (rows, cols)), shape=(n, n))
        pattern.sum_duplicates()
        pattern.sort_indices()
        self.indices = pattern.indices.copy()
        self.indptr = pattern.indptr.copy()
        col_of = np.repeat(np.arange(n), np.diff(self.indptr))
        key = col_of.astype(np.int64) * n + self.indices
        pos = np.searchsorted(key, cols.astype(np.int64) * n + rows)
        vals = np.concatenate([np.ones(2 * nf), -np.ones(2 * nf)])
        self.face_to_data = sp.csr_matrix(
            (vals, (pos, np.tile(np.arange(nf), 4))), shape=(key.size, nf)
        )
        pin_new = perm[self.pin]
        self.pin_pos = int(np.searchsorted(key, np.int64(pin_new) * n + pin_new))
        lay = electrode_layout(cfg)
        src = perm[lay["source_cells"]]
        self.rhs = np.zeros((n, cfg.n_sources))
        ks = np.arange(cfg.n_sources)
        self.rhs[src[:, 0], ks] = cfg.current
        self.rhs[src[:, 1], ks] = -cfg.current
        self.rhs_cols = [np.ascontiguousarray(col) for col in self.rhs.T]
        self.rec = perm[lay["receiver_cells"]]

    def one(self, y: np.ndarray) -> np.ndarray:
        cfg, f = self.cfg, self.faces
        r = np.hypot(self.xc - y[2], self.zc - y[1])
        m = cfg.sigma_background * np.exp(y[0] * expit((cfg.anomaly_radius - r) / cfg.edge_width))
        mf = (f.h_left + f.h_right) / (f.h_left / m[f.left] + f.h_right / m[f.right])
        data = self.face_to_data @ (self.geom * mf)
        data[self.pin_pos] *= 2.0
        n = self.mesh.n_cells
        A = sp.csc_matrix((data, self.indices, self.indptr), shape=(n, n))
        lu = splu(A, permc_spec="NATURAL", options={"SymmetricMode": True})
        # one column at a time: SuperLU's multi-right-hand-side solve is several times slower
        u = np.stack([lu.solve(b) for b in self.rhs_cols])  # (n_sources, n)
        return (u[:, self.rec[:, 0]] - u[:, self.rec[:, 1]]).ravel()


@functools.lru_cache(maxsize=4)
def _simulator(cfg: DCRConfig) -> _Simulator:
    return _Simulator(cfg)


def _check_y(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != N_PARAMS:
        raise ValueError(f"y must have shape (n, {N_PARAMS}) = (n, {PARAM_NAMES}), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y must be finite")
    return y


def _simulate_chunk(args: tuple[DCRConfig, np.ndarray]) -> np.ndarray:
    cfg, y = args
    sim = _simulator(cfg)
    return np.stack([sim.one(row) for row in y]) if len(y) else np.zeros((0, cfg.n_measurements))


_CHUNK = 50  # samples per task handed to a worker process


def simulate(
    y: np.ndarray,
    config: DCRConfig | None = None,
    progress: bool = False,
    workers: int = 1,
) -> np.ndarray:
    """The DCR forward map: parameters y (n, 3) -> potential differences (n, 882), float64.

    Row i is d(y_i) with d[k * n_receivers + j] = u_k(M_j) - u_k(N_j) (see
    :func:`electrode_layout`), u_k solving the finite-volume system for source dipole k in the
    model :func:`log_conductivity` (y_i). The result does not depend on ``workers`` (each sample
    is computed independently and identically).

    Args:
        y: (n, 3) = (log-conductivity contrast, depth of centre [m], x of centre [m]).
        config: the simulator settings (default DCRConfig()).
        progress: show a tqdm progress bar.
        workers: processes to use (1 = in this process).
    """
    cfg = config or DCRConfig()
    y = _check_y(y)
    n = len(y)
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers}")
    out = np.empty((n, cfg.n_measurements))
    chunk = _CHUNK
    starts = list(range(0, n, chunk))
    jobs = [(cfg, y[s : s + chunk]) for s in starts]
    with tqdm(total=n, disable=not (progress and on_terminal()), desc="DCR samples",
              unit="sample") as bar:
        if workers == 1 or n <= chunk:
            results = map(_simulate_chunk, jobs)
            for s, res in zip(starts, results, strict=True):
                out[s : s + len(res)] = res
                bar.update(len(res))
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ctx.Pool(workers) as pool:
                for s, res in zip(starts, pool.imap(_simulate_chunk, jobs), strict=True):
                    out[s : s + len(res)] = res
                    bar.update(len(res))
    return out
