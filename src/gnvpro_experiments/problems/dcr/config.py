"""DCR configuration: the survey, mesh and prior settings, and the data set's constants."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

GENERATOR_VERSION = "gnvpro-dcr-fv2d-v1"
"""Bumped whenever the generated numbers change; part of every content hash and cache key."""

N_PARAMS = 3
N_MEASUREMENTS = 882
PARAM_NAMES = ("log_contrast", "depth", "x_centre")

_REGENERATE = "gnvpro data dcr --n {n} --seed {seed} --out {path}"



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
