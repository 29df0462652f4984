"""DCR data sets: sample, generate, hash, save, load, cache and split."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import (
    _REGENERATE,
    GENERATOR_VERSION,
    N_PARAMS,
    PARAM_NAMES,
    DCRConfig,
)
from .simulation import (
    simulate,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..base import Split


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
    center_targets the targets are centred by the training mean (docs/experiments.md section 3).
    With normalize_inputs the parameters are mapped affinely from the prior box to [-1, 1]^3:
    x = 2 (y - low) / (high - low) - 1. Tensors are float64 unless ``dtype`` says otherwise.

    meta (JSON-able) holds name, n, seed, hash, normalize_inputs, center_targets, param_names,
    param_low, param_high and target_mean (the subtracted mean, zeros without centring).
    """
    import torch

    from ..base import Split

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
