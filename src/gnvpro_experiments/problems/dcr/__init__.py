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

import importlib
from typing import Any

# name -> submodule; loaded on first use (the simulator needs scipy.sparse, which an experiment
# that does not touch DCR should not pay for: the problem registry imports this package)
_WHERE = {
    **dict.fromkeys(("GENERATOR_VERSION", "N_MEASUREMENTS", "N_PARAMS", "PARAM_NAMES",
                     "DCRConfig"), "config"),
    **dict.fromkeys(("cached_dcr", "dcr_split", "generate_dcr", "load_dcr", "sample_prior",
                     "save_dcr"), "dataset"),
    **dict.fromkeys(("Mesh2D", "assemble_operator", "dipole_response", "divergence", "gradient",
                     "harmonic_average", "solve_potentials"), "finite_volume"),
    **dict.fromkeys(("build_mesh", "electrode_layout", "forward_operator", "log_conductivity",
                     "simulate"), "simulation"),
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


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
