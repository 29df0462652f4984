r"""Direct-current resistivity (DCR) surrogate data: 3 parameters -> 882 potential differences.

The paper's DCR data set (Newman et al. 2021, "Train like a (Var)Pro") and its generator were never
published,
so this module generates a stand-in with the same shape (inputs y in R^3, targets d in R^882)
from a finite-volume solver written with numpy / scipy.sparse. See docs/dcr.md for the write-up.

PDE (2-D vertical section, x horizontal, z depth positive downwards, z = 0 the ground surface)::

    -div( m(x, z; y) grad u ) = q     in  Omega = [x_min, x_max] x [0, z_max]
          m grad u . n        = 0     on  dOmega     (homogeneous Neumann everywhere)

where m > 0 is the electrical conductivity (S/m), u the electric potential (V) and q a current
source density. Sources are current dipoles (+I at electrode A, -I at electrode B), so
int q = 0, the compatibility condition of the pure Neumann problem. The 2-D model has infinite
strike: point sources in the section are line sources of current I per unit length along strike.

Discretisation (cell-centred finite volumes on a tensor-product mesh with widths hx, hz):

* unknowns u_i at cell centres; cells ordered with x fastest: i = ix + nx * iz.
* faces: the interior faces only (the boundary flux is zero by the Neumann condition); x-faces
  (between horizontal neighbours) first, then z-faces. B is the signed face-cell incidence matrix
  (B[f, L] = -1, B[f, R] = +1 for the face f between cell L and its +x / +z neighbour R).
* gradient  G = diag(1 / d_f) B : cells -> faces, d_f the distance between the two cell centres;
* divergence D = -B^T diag(a_f) : faces -> cells, the net outward flux through the faces of each
  cell (the volume-integrated divergence; the pointwise one is diag(1 / V) D), a_f the face length
  (face area per unit strike in 2-D);
  hence G = -diag(1 / (a_f d_f)) D^T;
* face conductivity: the distance-weighted harmonic average of the two neighbouring cells
  (resistors in series), m_f = (h_L + h_R) / (h_L / m_L + h_R / m_R), with h_L, h_R the cell
  widths normal to the face;
* the operator  A(m) = -D diag(m_f) G = B^T diag(a_f m_f / d_f) B,  the cell-integrated form of
  -div(m grad u). A is symmetric positive semi-definite; for m > 0 and a connected mesh its null
  space is exactly span{1}. The right-hand side is the cell-integrated source: a point current
  I in cell k contributes I e_k. The scheme is second-order accurate for smooth m and u
  (tested against a manufactured solution in tests/test_dcr.py).

Gauge: A is singular, so one cell k (the last cell, in the bottom-right padding corner) is pinned
by adding A_kk e_k e_k^T. For a right-hand side that sums to zero (every dipole), the pinned
system's solution is exactly the solution of A u = q with u_k = 0; potential differences, the
measurements, do not depend on the gauge. :func:`solve_potentials` shifts to the gauge
sum_i V_i u_i = 0. One sparse LU (SuperLU, with a fill-reducing ordering computed once per mesh)
per sample is reused for all 21 source dipoles.

Mesh (defaults): core cells of 5 m (half the electrode spacing): 85 across the electrode line
[-212.5, 212.5] m, 30 down to 150 m depth; 12 padding cells growing by a factor 1.3 on the left,
right and bottom (about 483 m each), 109 x 42 = 4578 cells.

Electrodes (defaults), all at the centres of the top row of cells (2.5 m below the surface):

* 43 receiver electrodes at x = -210, -200, ..., 210 m; 42 receiver dipoles (M, N) = adjacent
  pairs (x_j, x_{j+1}); each measures u(M) - u(N);
* 42 current electrodes half-way between them, x = -205, -195, ..., 205 m, paired into 21 nested,
  centred (Schlumberger-like) source dipoles: dipole k has A = -(5 + 10 k) m (+I = +1 A) and
  B = +(5 + 10 k) m (-I), k = 0..20, so AB/2 = 5, 15, ..., 205 m;
* the measurement vector is source-major: d[k * 42 + j] = (u_k(M_j) - u_k(N_j)); 21 * 42 = 882.

Model: log m(x, z; y) = log(sigma_background) + y_0 * s(x, z), with the smooth disc indicator
s = expit((R - r) / w), r the distance from the centre (x, z) = (y_2, y_1), R = 25 m the radius and
w = 2.5 m the edge width. The parameters are y = (log-conductivity contrast, depth of the centre in
m, horizontal position of the centre in m) with the prior y ~ U[-2, 2] x U[40, 120] x U[-150, 150].
The data depend smoothly on y.

Public API: :class:`DCRConfig`, :class:`Mesh2D`, :func:`build_mesh`, :func:`harmonic_average`,
:func:`divergence`, :func:`gradient`, :func:`assemble_operator`, :func:`forward_operator`,
:func:`solve_potentials`, :func:`dipole_response`, :func:`electrode_layout`,
:func:`log_conductivity`, :func:`sample_prior`, :func:`simulate`, :func:`generate_dcr`,
:func:`save_dcr`, :func:`load_dcr`, :func:`cached_dcr`, :func:`dcr_split`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu
from scipy.special import expit
from tqdm import tqdm

from ..progress import on_terminal

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .base import Split

__all__ = [
    "GENERATOR_VERSION",
    "N_MEASUREMENTS",
    "N_PARAMS",
    "PARAM_NAMES",
    "DCRConfig",
    "Mesh2D",
    "assemble_operator",
    "build_mesh",
    "cached_dcr",
    "dcr_split",
    "dipole_response",
    "divergence",
    "electrode_layout",
    "forward_operator",
    "generate_dcr",
    "gradient",
    "harmonic_average",
    "load_dcr",
    "log_conductivity",
    "sample_prior",
    "save_dcr",
    "simulate",
    "solve_potentials",
]

GENERATOR_VERSION = "gnvpro-dcr-fv2d-v1"
"""Bumped whenever the generated numbers change; part of every content hash and cache key."""

N_PARAMS = 3
N_MEASUREMENTS = 882
PARAM_NAMES = ("log_contrast", "depth", "x_centre")

_REGENERATE = "gnvpro data dcr --n {n} --seed {seed} --out {path}"


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DCRConfig:
    """Everything that fixes the DCR simulator (not the seed or the number of samples).

    Lengths are in metres, conductivities in S/m, the source current in A (per metre of strike).

    Attributes:
        n_electrodes: receiver electrodes on the surface (odd); they give n_electrodes - 1
            adjacent receiver dipoles and (n_electrodes - 1) / 2 nested source dipoles, i.e.
            (n_electrodes - 1)^2 / 2 measurements (882 for the default 43).
        electrode_spacing: distance between neighbouring receiver electrodes; the core cells are
            half of it wide, so current electrodes sit half-way between receiver electrodes.
        core_depth_cells: square core cells below the surface before the padding starts.
        n_pad_x: padding cells on the left and on the right of the core.
        n_pad_z: padding cells below the core.
        pad_factor: growth factor of successive padding cells (>= 1).
        sigma_background: background conductivity (S/m).
        anomaly_radius: radius R of the disc anomaly.
        edge_width: width w of the sigmoid edge of the disc, s = expit((R - r) / w).
        contrast_range: prior range of y_0, the natural-log conductivity contrast of the disc.
        depth_range: prior range of y_1, the depth of the disc's centre.
        x_range: prior range of y_2, the horizontal position of the disc's centre.
        current: the current I injected at A (and withdrawn at B) of each source dipole.
    """

    n_electrodes: int = 43
    electrode_spacing: float = 10.0
    core_depth_cells: int = 30
    n_pad_x: int = 12
    n_pad_z: int = 12
    pad_factor: float = 1.3
    sigma_background: float = 0.01
    anomaly_radius: float = 25.0
    edge_width: float = 2.5
    contrast_range: tuple[float, float] = (-2.0, 2.0)
    depth_range: tuple[float, float] = (40.0, 120.0)
    x_range: tuple[float, float] = (-150.0, 150.0)
    current: float = 1.0

    def __post_init__(self) -> None:
        for name in ("contrast_range", "depth_range", "x_range"):
            val = tuple(float(v) for v in getattr(self, name))
            if len(val) != 2 or not all(np.isfinite(val)) or not val[0] < val[1]:
                raise ValueError(f"DCRConfig.{name} must be (low, high) with low < high, got {val}")
            object.__setattr__(self, name, val)
        if int(self.n_electrodes) != self.n_electrodes or self.n_electrodes < 3:
            raise ValueError(
                f"DCRConfig.n_electrodes must be an integer >= 3, got {self.n_electrodes}"
            )
        if self.n_electrodes % 2 == 0:
            raise ValueError(
                f"DCRConfig.n_electrodes must be odd (so the current electrodes pair up into "
                f"centred dipoles), got {self.n_electrodes}"
            )
        for name in ("core_depth_cells", "n_pad_x", "n_pad_z"):
            v = getattr(self, name)
            if int(v) != v or v < (1 if name == "core_depth_cells" else 0):
                raise ValueError(f"DCRConfig.{name} must be a non-negative integer, got {v}")
        for name in (
            "electrode_spacing",
            "sigma_background",
            "anomaly_radius",
            "edge_width",
            "current",
        ):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"DCRConfig.{name} must be positive and finite, got {v}")
        if not (np.isfinite(self.pad_factor) and self.pad_factor >= 1.0):
            raise ValueError(f"DCRConfig.pad_factor must be >= 1, got {self.pad_factor}")

    @property
    def n_sources(self) -> int:
        """Number of source dipoles, (n_electrodes - 1) / 2."""
        return (self.n_electrodes - 1) // 2

    @property
    def n_receivers(self) -> int:
        """Number of receiver dipoles, n_electrodes - 1."""
        return self.n_electrodes - 1

    @property
    def n_measurements(self) -> int:
        """n_sources * n_receivers (882 by default)."""
        return self.n_sources * self.n_receivers

    @property
    def cell_size(self) -> float:
        """Width and height of the core cells, electrode_spacing / 2."""
        return self.electrode_spacing / 2.0

    @property
    def param_low(self) -> np.ndarray:
        """Lower ends of the uniform prior, in the order of PARAM_NAMES."""
        return np.array([self.contrast_range[0], self.depth_range[0], self.x_range[0]])

    @property
    def param_high(self) -> np.ndarray:
        """Upper ends of the uniform prior, in the order of PARAM_NAMES."""
        return np.array([self.contrast_range[1], self.depth_range[1], self.x_range[1]])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists)."""
        return {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the form that is hashed."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DCRConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown DCRConfig fields {sorted(unknown)}; known: {sorted(names)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)


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


# --------------------------------------------------------------------------------------------
# data sets: generate, hash, save, load, cache
# --------------------------------------------------------------------------------------------


def sample_prior(n: int, seed: int, config: DCRConfig | None = None) -> np.ndarray:
    """n draws of y from the uniform prior, (n, 3) float64; numpy default_rng(seed)."""
    cfg = config or DCRConfig()
    _check_n_seed(n, seed)
    u = np.random.default_rng(seed).random((n, N_PARAMS))
    return cfg.param_low + (cfg.param_high - cfg.param_low) * u


def _check_n_seed(n: int, seed: int) -> None:
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _content_hash(config_json: str, n: int, seed: int, Y: np.ndarray, D: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(GENERATOR_VERSION.encode())
    h.update(b"\0" + config_json.encode() + b"\0")
    h.update(f"n={int(n)};seed={int(seed)}".encode())
    for arr in (Y, D):
        a = np.ascontiguousarray(arr, dtype="<f8")
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def generate_dcr(
    n: int,
    seed: int,
    config: DCRConfig | None = None,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Generate n DCR samples: Y ~ prior (seeded), D = simulate(Y).

    Deterministic: the same (n, seed, config) gives bitwise-equal arrays, whatever ``workers``.

    Returns:
        dict with Y (n, 3) float64, D (n, 882) float64, config (JSON-able dict), n, seed,
        version (GENERATOR_VERSION) and hash (sha256 hex over version, config JSON, n, seed and
        the bytes of Y and D).
    """
    cfg = config or DCRConfig()
    Y = sample_prior(n, seed, cfg)
    D = simulate(Y, cfg, progress=progress, workers=workers)
    cj = cfg.to_json()
    return {
        "Y": Y,
        "D": D,
        "config": cfg.to_dict(),
        "n": int(n),
        "seed": int(seed),
        "version": GENERATOR_VERSION,
        "hash": _content_hash(cj, n, seed, Y, D),
    }


def save_dcr(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` (from :func:`generate_dcr`) to a compressed .npz at exactly ``path``.

    The file holds Y, D, config_json, n, seed, version and hash; it is written to a temporary
    file and renamed, so an interrupted write never leaves a half file under ``path``.
    """
    p = Path(path).expanduser()
    cfg = DCRConfig.from_dict(data["config"])
    Y, D = np.asarray(data["Y"], dtype=np.float64), np.asarray(data["D"], dtype=np.float64)
    n, seed = int(data["n"]), int(data["seed"])
    digest = _content_hash(cfg.to_json(), n, seed, Y, D)
    if "hash" in data and data["hash"] != digest:
        raise ValueError("data['hash'] does not match its arrays; regenerate the data set")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(
                fh,
                Y=Y,
                D=D,
                config_json=np.array(cfg.to_json()),
                n=np.array(n, dtype=np.int64),
                seed=np.array(seed, dtype=np.int64),
                version=np.array(GENERATOR_VERSION),
                hash=np.array(digest),
            )
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


class _BadDCRFile(ValueError):
    """A DCR file that cannot be used (the message says how to regenerate it)."""


def load_dcr(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by :func:`save_dcr` and verify its content hash.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is unreadable, incomplete, from another generator version, or its
            hash does not match its contents; the message says how to regenerate it.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"DCR data file not found at '{p}'. Generate it with "
            f"`{_REGENERATE.format(n='N', seed='S', path=p)}`."
        )
    n_s: tuple[Any, Any] = ("N", "S")

    def fail(why: str) -> ValueError:
        cmd = _REGENERATE.format(n=n_s[0], seed=n_s[1], path=p)
        return _BadDCRFile(f"DCR data file '{p}' {why}. Delete it and regenerate with `{cmd}`.")

    try:
        with np.load(p, allow_pickle=False) as z:
            files = set(z.files)
            need = {"Y", "D", "config_json", "n", "seed", "version", "hash"}
            if not need <= files:
                raise fail(f"is incomplete (missing {sorted(need - files)})")
            n, seed = int(z["n"]), int(z["seed"])
            n_s = (n, seed)
            version = str(z["version"])
            stored = str(z["hash"])
            config_json = str(z["config_json"])
            Y, D = z["Y"], z["D"]
    except _BadDCRFile:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise fail(f"is corrupt or not a DCR .npz ({type(e).__name__}: {e})") from e
    if version != GENERATOR_VERSION:
        raise fail(f"was made by generator {version!r}, this is {GENERATOR_VERSION!r}")
    try:
        cfg = DCRConfig.from_dict(json.loads(config_json))
    except (ValueError, TypeError) as e:
        raise fail(f"holds an invalid config ({e})") from e
    if Y.dtype != np.float64 or D.dtype != np.float64:
        raise fail("holds arrays that are not float64")
    if Y.shape != (n, N_PARAMS) or D.shape != (n, cfg.n_measurements):
        raise fail(
            f"has arrays of shapes {Y.shape}, {D.shape} (expected ({n}, 3), ({n}, "
            f"{cfg.n_measurements}))"
        )
    digest = _content_hash(config_json, n, seed, Y, D)
    if digest != stored:
        raise fail("fails its content-hash check (it was modified or damaged)")
    return {
        "Y": Y,
        "D": D,
        "config": cfg.to_dict(),
        "n": n,
        "seed": seed,
        "version": version,
        "hash": stored,
    }


def _cache_key(cfg: DCRConfig, n: int, seed: int) -> str:
    text = f"{GENERATOR_VERSION}\0{cfg.to_json()}\0n={int(n)};seed={int(seed)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_dcr(
    cache_dir: str | os.PathLike[str],
    n: int,
    seed: int,
    config: DCRConfig | None = None,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Load ``cache_dir/dcr_n{n}_seed{seed}_{key}.npz`` or generate and save it on a miss.

    key = the first 16 hex digits of sha256(GENERATOR_VERSION, config JSON, n, seed), so any change
    of config, n, seed or generator version is a miss. A cached file that fails to load (corrupt,
    hash mismatch) is regenerated with a warning.
    """
    cfg = config or DCRConfig()
    _check_n_seed(n, seed)
    path = (
        Path(cache_dir).expanduser()
        / f"dcr_n{int(n)}_seed{int(seed)}_{_cache_key(cfg, n, seed)}.npz"
    )
    if path.is_file():
        try:
            data = load_dcr(path)
            if data["config"] == cfg.to_dict() and data["n"] == n and data["seed"] == seed:
                return data
            warnings.warn(
                f"cached DCR file {path} does not match its key; regenerating", stacklevel=2
            )
        except ValueError as e:
            warnings.warn(f"{e} Regenerating it now.", stacklevel=2)
    data = generate_dcr(n, seed, cfg, progress=progress, workers=workers)
    save_dcr(path, data)
    return data


def dcr_split(
    data: dict[str, Any],
    n_train: int = 8000,
    n_val: int = 1000,
    n_test: int | None = None,
    normalize_inputs: bool = True,
    center_targets: bool = True,
    dtype: torch.dtype | None = None,
) -> Split:
    """Split a DCR data set (generate_dcr / load_dcr / cached_dcr) into train / val / test.

    The samples are already i.i.d. draws, so the split is by position: the first n_train rows
    train, the next n_val validate, the next n_test (default: the rest) test. With
    center_targets the targets are centred by the training mean (experiments.md section 3). With
    normalize_inputs the parameters are mapped affinely from the prior box to [-1, 1]^3:
    x = 2 (y - low) / (high - low) - 1. Tensors are float64 unless ``dtype`` says otherwise.

    meta (JSON-able) holds name, n, seed, hash, normalize_inputs, center_targets, param_names,
    param_low, param_high and target_mean (the subtracted mean, zeros without centring).
    """
    import torch

    from .base import Split

    Y, D = np.asarray(data["Y"]), np.asarray(data["D"])
    n = len(Y)
    n_test = n - n_train - n_val if n_test is None else n_test
    if min(n_train, n_val, n_test) < 0 or n_train < 1 or n_train + n_val + n_test > n:
        raise ValueError(
            f"cannot split {n} samples into train/val/test = {n_train}/{n_val}/{n_test}"
        )
    cfg = DCRConfig.from_dict(data["config"])
    low, high = cfg.param_low, cfg.param_high
    X = 2.0 * (Y - low) / (high - low) - 1.0 if normalize_inputs else Y
    mean = D[:n_train].mean(axis=0) if center_targets else np.zeros(D.shape[1])
    T = D - mean
    dt = dtype if dtype is not None else torch.float64
    a, b, c = n_train, n_train + n_val, n_train + n_val + n_test

    def t(arr: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(arr)).to(dt)

    return Split(
        x_train=t(X[:a]),
        y_train=t(T[:a]),
        x_val=t(X[a:b]),
        y_val=t(T[a:b]),
        x_test=t(X[b:c]),
        y_test=t(T[b:c]),
        meta={
            "name": "dcr",
            "n": int(data["n"]),
            "seed": int(data["seed"]),
            "hash": data.get("hash"),
            "normalize_inputs": bool(normalize_inputs),
            "center_targets": bool(center_targets),
            "param_names": list(PARAM_NAMES),
            "param_low": low.tolist(),
            "param_high": high.tolist(),
            "target_mean": mean.tolist(),
        },
    )
