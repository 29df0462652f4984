"""The mesh type and the cell-centred finite-volume operators of −div(m grad u) (docs/dcr.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

# --------------------------------------------------------------------------------------------
# mesh and finite-volume operators
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Mesh2D:
    """A tensor-product mesh of the rectangle [x0, x0 + sum(hx)] x [z0, z0 + sum(hz)].

    Cells are ordered with x fastest: cell (ix, iz) has index ix + nx * iz, so a cell vector
    reshapes to (nz, nx). z is depth (positive downwards); z0 = 0 is the surface.
    """

    hx: np.ndarray
    hz: np.ndarray
    x0: float = 0.0
    z0: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hx", "hz"):
            h = np.asarray(getattr(self, name), dtype=np.float64)
            if h.ndim != 1 or h.size < 1 or not np.all(np.isfinite(h)) or np.any(h <= 0):
                raise ValueError(f"Mesh2D.{name} must be a 1-D array of positive widths")
            h = h.copy()
            h.setflags(write=False)
            object.__setattr__(self, name, h)

    @classmethod
    def uniform(
        cls, nx: int, nz: int, lx: float, lz: float, x0: float = 0.0, z0: float = 0.0
    ) -> Mesh2D:
        """nx x nz equal cells on [x0, x0 + lx] x [z0, z0 + lz]."""
        return cls(np.full(nx, lx / nx), np.full(nz, lz / nz), x0, z0)

    @property
    def nx(self) -> int:
        return self.hx.size

    @property
    def nz(self) -> int:
        return self.hz.size

    @property
    def n_cells(self) -> int:
        return self.nx * self.nz

    @property
    def x_nodes(self) -> np.ndarray:
        return self.x0 + np.concatenate([[0.0], np.cumsum(self.hx)])

    @property
    def z_nodes(self) -> np.ndarray:
        return self.z0 + np.concatenate([[0.0], np.cumsum(self.hz)])

    @property
    def x_centres(self) -> np.ndarray:
        xn = self.x_nodes
        return 0.5 * (xn[:-1] + xn[1:])

    @property
    def z_centres(self) -> np.ndarray:
        zn = self.z_nodes
        return 0.5 * (zn[:-1] + zn[1:])

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, z) of every cell centre, each of shape (n_cells,)."""
        xc, zc = np.meshgrid(self.x_centres, self.z_centres)
        return xc.ravel(), zc.ravel()

    def volumes(self) -> np.ndarray:
        """Cell areas hx * hz (volume per unit strike), shape (n_cells,)."""
        return np.outer(self.hz, self.hx).ravel()

    def cell_index(self, ix: np.ndarray | int, iz: np.ndarray | int) -> np.ndarray:
        """Linear index ix + nx * iz."""
        return np.asarray(ix) + self.nx * np.asarray(iz)


@dataclass(frozen=True, eq=False)
class _Faces:
    """Interior faces of a mesh: neighbours L (-side) and R (+side), length a, centre distance d,
    and the widths h_L, h_R of the two cells normal to the face."""

    left: np.ndarray
    right: np.ndarray
    length: np.ndarray
    dist: np.ndarray
    h_left: np.ndarray
    h_right: np.ndarray

    @property
    def n(self) -> int:
        return self.left.size


def _faces(mesh: Mesh2D) -> _Faces:
    nx, nz = mesh.nx, mesh.nz
    idx = np.arange(mesh.n_cells).reshape(nz, nx)
    hx, hz = mesh.hx, mesh.hz
    # x-faces: between (ix, iz) and (ix + 1, iz); length hz[iz]
    hxl = np.broadcast_to(hx[:-1], (nz, nx - 1))
    hxr = np.broadcast_to(hx[1:], (nz, nx - 1))
    ax = np.broadcast_to(hz[:, None], (nz, nx - 1))
    # z-faces: between (ix, iz) and (ix, iz + 1); length hx[ix]
    hzl = np.broadcast_to(hz[:-1, None], (nz - 1, nx))
    hzr = np.broadcast_to(hz[1:, None], (nz - 1, nx))
    az = np.broadcast_to(hx[None, :], (nz - 1, nx))
    h_left = np.concatenate([hxl.ravel(), hzl.ravel()])
    h_right = np.concatenate([hxr.ravel(), hzr.ravel()])
    return _Faces(
        left=np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()]),
        right=np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()]),
        length=np.concatenate([ax.ravel(), az.ravel()]),
        dist=0.5 * (h_left + h_right),
        h_left=h_left,
        h_right=h_right,
    )


def _incidence(mesh: Mesh2D, faces: _Faces) -> sp.csr_matrix:
    nf = faces.n
    rows = np.concatenate([np.arange(nf), np.arange(nf)])
    cols = np.concatenate([faces.left, faces.right])
    vals = np.concatenate([-np.ones(nf), np.ones(nf)])
    return sp.csr_matrix((vals, (rows, cols)), shape=(nf, mesh.n_cells))


def gradient(mesh: Mesh2D) -> sp.csr_matrix:
    """G = diag(1 / d_f) B: cell values -> normal derivatives on the interior faces.

    (G u)_f = (u_R - u_L) / d_f with d_f the distance between the cell centres; boundary faces
    are omitted (their flux is zero by the homogeneous Neumann condition).
    """
    faces = _faces(mesh)
    return sp.diags(1.0 / faces.dist) @ _incidence(mesh, faces)


def divergence(mesh: Mesh2D) -> sp.csr_matrix:
    """D = -B^T diag(a_f): face fluxes -> net outward flux of each cell (volume-integrated div).

    (D F)_i = sum over the faces of cell i of a_f F_f n_f, with a_f the face length and n_f = +1
    where the face's normal points out of cell i. The pointwise divergence is diag(1 / V) D;
    D and G are related by G = -diag(1 / (a_f d_f)) D^T.
    """
    faces = _faces(mesh)
    return (-_incidence(mesh, faces).T @ sp.diags(faces.length)).tocsr()


def harmonic_average(m: np.ndarray, mesh: Mesh2D) -> np.ndarray:
    """Face values m_f = (h_L + h_R) / (h_L / m_L + h_R / m_R) of a positive cell field m.

    The distance-weighted harmonic mean: the exact effective conductivity of two half-cells in
    series, exact for a piecewise-constant m and second-order accurate for a smooth one.
    """
    m = _check_conductivity(m, mesh)
    faces = _faces(mesh)
    return (faces.h_left + faces.h_right) / (
        faces.h_left / m[faces.left] + faces.h_right / m[faces.right]
    )


def _check_conductivity(m: np.ndarray, mesh: Mesh2D) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (mesh.n_cells,):
        raise ValueError(
            f"conductivity must have shape (n_cells,) = ({mesh.n_cells},), got {m.shape}; "
            "cells are ordered with x fastest (index ix + nx * iz)"
        )
    if not np.all(np.isfinite(m)) or np.any(m <= 0):
        raise ValueError("conductivity must be positive and finite in every cell")
    return m


def assemble_operator(m: np.ndarray, mesh: Mesh2D) -> sp.csc_matrix:
    """A(m) = -D diag(harmonic_average(m)) G = B^T diag(a_f m_f / d_f) B, shape (n_cells, n_cells).

    The cell-integrated finite-volume discretisation of -div(m grad u) with homogeneous Neumann
    boundaries: symmetric positive semi-definite, null space span{1} for m > 0. Solve it with
    :func:`solve_potentials`, which fixes the gauge.

    Args:
        m: cell conductivity (S/m), shape (n_cells,), positive.
        mesh: the mesh.
    """
    faces = _faces(mesh)
    c = faces.length * harmonic_average(m, mesh) / faces.dist
    L, R = faces.left, faces.right
    rows = np.concatenate([L, R, L, R])
    cols = np.concatenate([L, R, R, L])
    vals = np.concatenate([c, c, -c, -c])
    A = sp.csc_matrix((vals, (rows, cols)), shape=(mesh.n_cells, mesh.n_cells))
    A.sum_duplicates()
    return A


def _pin(A: sp.csc_matrix, k: int) -> sp.csc_matrix:
    A = A.tolil(copy=True)
    A[k, k] = 2.0 * A[k, k]
    return A.tocsc()


def solve_potentials(m: np.ndarray, mesh: Mesh2D, rhs: np.ndarray) -> np.ndarray:
    """Solve A(m) u = rhs (cell-integrated sources) in the gauge sum_i V_i u_i = 0.

    Args:
        m: cell conductivity, shape (n_cells,).
        mesh: the mesh.
        rhs: shape (n_cells,) or (n_cells, k); each column must sum to zero (the Neumann
            compatibility condition) up to 1e-10 of its 1-norm, or a ValueError is raised.
            A column's exact mean is removed first (the least-squares projection onto range(A)).

    Returns:
        u with the shape of rhs.
    """
    rhs = np.asarray(rhs, dtype=np.float64)
    one_d = rhs.ndim == 1
    b = rhs[:, None] if one_d else rhs
    if b.ndim != 2 or b.shape[0] != mesh.n_cells:
        raise ValueError(f"rhs must have shape (n_cells,) or (n_cells, k), got {rhs.shape}")
    total = b.sum(axis=0)
    if np.any(np.abs(total) > 1e-10 * np.maximum(np.abs(b).sum(axis=0), 1e-300)):
        raise ValueError(
            "rhs columns must sum to zero (pure Neumann problem: the net source current must "
            "vanish); use dipole sources (+I, -I)"
        )
    b = b - b.mean(axis=0)
    A = _pin(assemble_operator(m, mesh), mesh.n_cells - 1)
    lu = splu(A, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})
    u = np.stack([lu.solve(np.ascontiguousarray(col)) for col in b.T], axis=1)
    vol = mesh.volumes()
    u = u - (vol @ u) / vol.sum()
    return u[:, 0] if one_d else u


def dipole_response(
    m: np.ndarray,
    mesh: Mesh2D,
    sources: np.ndarray | Sequence[tuple[int, int]],
    receivers: np.ndarray | Sequence[tuple[int, int]],
    current: float = 1.0,
) -> np.ndarray:
    """Potential differences u_s(M) - u_s(N) for every source dipole s and receiver dipole (M, N).

    Source dipole (A, B) injects +current into cell A and -current into cell B.

    Args:
        m: cell conductivity, shape (n_cells,).
        mesh: the mesh.
        sources: (n_src, 2) cell indices (A, B).
        receivers: (n_rec, 2) cell indices (M, N).
        current: the injected current.

    Returns:
        (n_src, n_rec) array.
    """
    src = np.asarray(sources, dtype=np.int64).reshape(-1, 2)
    rec = np.asarray(receivers, dtype=np.int64).reshape(-1, 2)
    n = mesh.n_cells
    for name, arr in (("sources", src), ("receivers", rec)):
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(
                f"{name} must be cell indices in [0, {n}), got {arr.min()}..{arr.max()}"
            )
    rhs = np.zeros((n, len(src)))
    cols = np.arange(len(src))
    rhs[src[:, 0], cols] += current
    rhs[src[:, 1], cols] -= current
    u = solve_potentials(m, mesh, rhs)
    return (u[rec[:, 0]] - u[rec[:, 1]]).T
