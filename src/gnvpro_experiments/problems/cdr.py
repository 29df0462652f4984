"""Convection-diffusion-reaction (CDR) surrogate data and the reference parity fixture.

Data: the paper authors' ``CDR_Data.mat`` (``Y`` 55×800 reaction parameters, ``C`` 72×800
observations, one sample per column); here transposed to rows, Y (800, 55), C (800, 72).

Reference: Meganet.m commit bf96b8e; ``shared/reference/cdr_parity.npz`` holds its split, θ0,
forward-pass intermediates and 3-level GNvpro history.  The reference parameter vector is

    θ_flat = [vec(K_open) (column-major);  per node t: Θ_t[rows_j, cols_j] (j = 1..w(w−1)), b_t]

with (rows, cols) the off-diagonal positions of a w×w matrix in column-major order.

:class:`CDR` is the experiment's problem (``problem = "cdr"``); its seed "ref" is the
reference's split and θ0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from gnvpro_experiments.errors import ExperimentError
from gnvpro_experiments.models.resnet import AntisymmetricResNet, paper_network
from gnvpro_experiments.problems.base import Problem, Split
from gnvpro_experiments.problems.paths import find_shared, optional_file

if TYPE_CHECKING:
    from gnvpro_experiments.config import ExperimentConfig

__all__ = [
    "CDR",
    "cdr_split",
    "default_cdr_path",
    "default_reference_path",
    "free_theta_positions",
    "from_reference_flat",
    "load_cdr_mat",
    "load_reference",
    "reference_network",
    "reference_split",
    "to_reference_flat",
]

CDR_FILE = "CDR_Data.mat"
REFERENCE_FILE = "cdr_parity.npz"


def default_cdr_path() -> Path:
    """Where ``CDR_Data.mat`` is looked for: ``$GNVPRO_DATA``, then ``<repo>/../shared/data``
    (repo found from the package file, then from the cwd).  The path may not exist."""
    return find_shared("data", CDR_FILE)


def default_reference_path() -> Path:
    """Where ``cdr_parity.npz`` is looked for: ``$GNVPRO_DATA``, then
    ``<repo>/../shared/reference`` (from the package file, then the cwd).  May not exist."""
    return find_shared("reference", REFERENCE_FILE)


def load_cdr_mat(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load Y (800, 55) and C (800, 72) float64 (rows = samples) from ``CDR_Data.mat``."""
    import scipy.io

    p = Path(path) if path is not None else default_cdr_path()
    if not p.is_file():
        raise FileNotFoundError(
            f"CDR data file not found: {p}. It is the paper authors' CDR_Data.mat (variables Y "
            "55x800 and C 72x800; e.g. GitHub hrosso710/Continuous_DNN_Surrogates_Revised, "
            "matlab/data/CDR_Data.mat). Put it at ../shared/data/CDR_Data.mat relative to the "
            "repository, or in the directory named by $GNVPRO_DATA, or pass its path."
        )
    try:
        m = scipy.io.loadmat(str(p))
    except Exception as e:  # empty, truncated or not a MATLAB file (scipy raises many kinds)
        raise ValueError(f"{p}: not a readable MATLAB .mat file ({e})") from None
    if "Y" not in m or "C" not in m:
        raise ValueError(f"{p}: expected variables 'Y' and 'C', found {sorted(m)}")
    Y, C = np.asarray(m["Y"], dtype=np.float64), np.asarray(m["C"], dtype=np.float64)
    if (
        Y.ndim != 2
        or C.ndim != 2
        or Y.shape[0] != 55
        or C.shape[0] != 72
        or (Y.shape[1] != C.shape[1])
    ):
        raise ValueError(
            f"{p}: expected Y (55, n) and C (72, n) with the same n, got {Y.shape} and {C.shape}"
        )
    return np.ascontiguousarray(Y.T), np.ascontiguousarray(C.T)


def load_reference(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Load the parity fixture ``cdr_parity.npz`` into a dict of arrays."""
    p = Path(path) if path is not None else default_reference_path()
    if not p.is_file():
        raise FileNotFoundError(
            f"CDR parity fixture not found: {p} (expected ../shared/reference/cdr_parity.npz "
            "relative to the repository, or in $GNVPRO_DATA)."
        )
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _as_ref(ref: Any) -> Mapping[str, np.ndarray]:
    if isinstance(ref, str | os.PathLike):
        return load_reference(ref)
    return ref


def cdr_split(
    Y: np.ndarray | Tensor,
    C: np.ndarray | Tensor,
    train_idx: Any,
    val_idx: Any,
    test_idx: Any,
    dtype: torch.dtype = torch.float64,
) -> Split:
    """Rows of Y (n, 55) / C (n, 72) selected by the index arrays (0-based, order kept)."""
    Yt = torch.as_tensor(np.asarray(Y), dtype=dtype)
    Ct = torch.as_tensor(np.asarray(C), dtype=dtype)
    if Yt.ndim != 2 or Ct.ndim != 2 or Yt.shape[0] != Ct.shape[0]:
        raise ValueError(
            f"cdr_split: need Y (n, d), C (n, c), got {tuple(Yt.shape)}, {tuple(Ct.shape)}"
        )
    idx = [torch.as_tensor(np.asarray(i, dtype=np.int64)) for i in (train_idx, val_idx, test_idx)]
    return Split(
        x_train=Yt[idx[0]],
        y_train=Ct[idx[0]],
        x_val=Yt[idx[1]],
        y_val=Ct[idx[1]],
        x_test=Yt[idx[2]],
        y_test=Ct[idx[2]],
        meta={"name": "cdr", "train_idx": idx[0], "val_idx": idx[1], "test_idx": idx[2]},
    )


def reference_split(ref_npz: Any, Y: np.ndarray | Tensor, C: np.ndarray | Tensor) -> Split:
    """The reference's 400/200/200 split (Octave randperm after rng(42)) from the fixture
    (a path or a loaded mapping)."""
    ref = _as_ref(ref_npz)
    return cdr_split(Y, C, ref["train_idx"], ref["val_idx"], ref["test_idx"])


def free_theta_positions(width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the w(w−1) off-diagonal entries of a w×w matrix, column-major order."""
    rows, cols = [], []
    for c in range(width):
        for r in range(width):
            if r != c:
                rows.append(r)
                cols.append(c)
    return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)


def _key(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def to_reference_flat(named: Mapping[str, Tensor], prefix: str = "") -> Tensor:
    """Named AntisymmetricResNet parameters → reference flat vector (length w·d + n_nodes·w²).

    Layout: vec(K_open) column-major, then per node Θ_t at the free (off-diagonal) positions and
    b_t.  ``prefix`` is the module name if the keys come from a larger module (e.g. "0").
    Differentiable; applied to a gradient dict it gives the reference gradient.
    """
    if _key(prefix, "opening.bias") in named:
        raise ValueError("to_reference_flat: the reference layout has no opening-layer bias")
    K = named[_key(prefix, "opening.weight")]
    th = named[_key(prefix, "theta")]
    b = named[_key(prefix, "bias")]
    w = th.shape[-1]
    rows, cols = (torch.as_tensor(a, device=th.device) for a in free_theta_positions(w))
    per_node = torch.cat([th[:, rows, cols], b], dim=1)  # (n_nodes, w(w-1) + w)
    return torch.cat([K.transpose(0, 1).reshape(-1), per_node.reshape(-1)])


def from_reference_flat(
    flat: Tensor | np.ndarray, template: Mapping[str, Tensor] | nn.Module, prefix: str = ""
) -> dict[str, Tensor]:
    """Reference flat vector → named parameters shaped like ``template`` (a dict of named
    parameters or an AntisymmetricResNet).  The diagonal of Θ is set to 0.  Differentiable."""
    if isinstance(template, nn.Module):
        template = dict(template.named_parameters())
    if _key(prefix, "opening.bias") in template:
        raise ValueError("from_reference_flat: the reference layout has no opening-layer bias")
    kw, kt, kb = (_key(prefix, s) for s in ("opening.weight", "theta", "bias"))
    K_t, th_t = template[kw], template[kt]
    flat = torch.as_tensor(flat, dtype=K_t.dtype, device=K_t.device)
    width, d = K_t.shape
    nn_ = th_t.shape[0]
    nfree = width * (width - 1)
    expect = width * d + nn_ * (nfree + width)
    if flat.ndim != 1 or flat.numel() != expect:
        raise ValueError(
            f"from_reference_flat: expected a flat vector of {expect} entries for width {width}, "
            f"{d} inputs and {nn_} nodes, got shape {tuple(flat.shape)}"
        )
    K = flat[: width * d].reshape(d, width).transpose(0, 1)
    per_node = flat[width * d :].reshape(nn_, nfree + width)
    rows, cols = (torch.as_tensor(a, device=K_t.device) for a in free_theta_positions(width))
    nodes = torch.arange(nn_, device=K_t.device)[:, None]
    th = torch.zeros(nn_, width, width, dtype=flat.dtype, device=flat.device).index_put(
        (nodes, rows[None, :], cols[None, :]), per_node[:, :nfree]
    )
    return {kw: K, kt: th, kb: per_node[:, nfree:]}


def reference_network(ref: Any) -> nn.Sequential:
    """``paper_network(55, 72, width=8, n_nodes=2)`` (no opening bias, float64) loaded with the
    fixture's K_open, Theta_res, b_res (θ0); head ``nn.Linear(8, 72)`` zero."""
    ref = _as_ref(ref)
    K_open = np.asarray(ref["K_open"])
    theta = np.asarray(ref["Theta_res"])
    width, d = K_open.shape
    net = paper_network(
        d,
        72,
        width,
        n_nodes=theta.shape[0],
        T=float(ref["T"]) if "T" in ref else 1.0,
        n_steps=1,
        open_bias=False,
        dtype=torch.float64,
        shift=float(ref["K_diag_shift"]) if "K_diag_shift" in ref else 1e-4,
    )
    feats: AntisymmetricResNet = net[0]  # type: ignore[assignment]
    with torch.no_grad():
        feats.opening.weight.copy_(torch.as_tensor(K_open))
        feats.theta.copy_(torch.as_tensor(theta))
        feats.bias.copy_(torch.as_tensor(np.asarray(ref["b_res"])))
    return net


class CDR(Problem):
    """CDR surrogate regression: 55 reaction parameters → 72 observations (``CDR_Data.mat``).

    Seed s: a ``torch.randperm`` of the samples (generator seeded with s), the first n_train
    train, the next n_val validate, the next n_test test.  Seed "ref": the reference's split,
    θ0 and GNvpro history from the parity fixture ``cdr_parity.npz``.
    """

    name = "cdr"
    data_keys = frozenset({"n_train", "n_val", "n_test"})
    has_reference = True

    def load(self, cfg: ExperimentConfig, data_path: str | None,
             progress: bool) -> tuple[np.ndarray, np.ndarray]:
        Y, C = load_cdr_mat(optional_file(data_path))
        n_need = sum(int(cfg.data[k]) for k in ("n_train", "n_val", "n_test"))
        if len(Y) < n_need:
            raise ExperimentError(f"CDR data has {len(Y)} samples, the split needs {n_need}")
        return Y, C

    def split(self, cfg: ExperimentConfig, raw: tuple[np.ndarray, np.ndarray],
              seed: int) -> Split:
        Y, C = raw
        d = cfg.data
        a, b, c = int(d["n_train"]), int(d["n_val"]), int(d["n_test"])
        perm = torch.randperm(len(Y), generator=torch.Generator().manual_seed(int(seed)))
        return cdr_split(Y, C, perm[:a].numpy(), perm[a : a + b].numpy(),
                         perm[a + b : a + b + c].numpy())

    def reference_split(self, cfg: ExperimentConfig,
                        raw: tuple[np.ndarray, np.ndarray]) -> Split:
        return reference_split(load_reference(), *raw)

    def reference_model(self, cfg: ExperimentConfig) -> nn.Sequential:
        return reference_network(load_reference())

    def reference_history(self, levels: int) -> dict:
        """The reference GNvpro history (hist_level1..L: Jc, F(val), TotalWork cumulated) and
        its final relative errors."""
        ref = load_reference()
        cols = [str(c) for c in ref["hist_columns"]]
        ij, iw, iv = cols.index("Jc"), cols.index("TotalWork"), cols.index("F(val)")
        out: dict[str, Any] = {"method": "gnvpro (reference, Meganet.m)", "work_units": [],
                               "loss": [], "val_loss": [], "level": [], "level_starts": []}
        offset = 0.0
        for lvl in range(1, levels + 1):
            key = f"hist_level{lvl}"
            if key not in ref:
                break
            h = np.asarray(ref[key])
            wu = h[:, iw].copy()
            wu[0] = 2.0  # row 0 shows 0; the initial evaluation costs 2
            out["level_starts"].append(offset)
            out["work_units"] += (offset + wu).tolist()
            out["loss"] += h[:, ij].tolist()
            out["val_loss"] += h[:, iv].tolist()
            out["level"] += [lvl] * len(h)
            offset += float(wu[-1])
        rel = ref["relerr_mean"]
        out["finals"] = {"train": float(rel[0]), "val": float(rel[1]), "test": float(rel[2])}
        return out
