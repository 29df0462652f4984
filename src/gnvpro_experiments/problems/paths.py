"""Where the shared data files live, and clear errors when they are missing."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "GNVPRO_DATA"


_REPO_ROOT = Path(__file__).resolve().parents[3]


def find_shared(subdir: str, name: str) -> Path:
    """The one data-lookup rule: the first existing file among ``$GNVPRO_DATA/name``,
    ``$GNVPRO_DATA/subdir/name``, then ``<repo>/../shared/subdir/name`` and
    ``<repo>/shared/subdir/name`` (the repository found from this file, then from the current
    directory); else the first ``../shared`` candidate, which may not exist (callers say so).
    """
    cands: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        cands += [Path(env).expanduser() / name, Path(env).expanduser() / subdir / name]
    for root in (_REPO_ROOT, Path.cwd()):
        cands += [root.parent / "shared" / subdir / name, root / "shared" / subdir / name]
    return next((c for c in cands if c.is_file()), _REPO_ROOT.parent / "shared" / subdir / name)


def default_data_file(name: str) -> Path:
    """Where the data file ``name`` is looked for (:func:`find_shared` in ``data``)."""
    return find_shared("data", name)


def require_file(path: str | os.PathLike[str], what: str, how_to_get: str) -> Path:
    """Return ``path`` as a Path if it is an existing file, else raise a helpful error.

    Raises:
        FileNotFoundError: naming the file, what it is, how to get it, and how to point at it.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} not found at '{p}'. {how_to_get} Then pass its location with --data "
            f"(or the path argument), or set ${ENV_VAR} to the directory that holds it."
        )
    return p


def optional_file(path: str | os.PathLike[str] | None) -> Path | None:
    """None (the problem's default data), or ``path`` as a Path if it is an existing file.

    Raises:
        FileNotFoundError: ``data file not found: PATH``.
    """
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    return p


def require_dir(path: str | os.PathLike[str], what: str, how_to_get: str) -> Path:
    """Like :func:`require_file` for a directory."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(
            f"{what} not found at '{p}' (no such directory). {how_to_get} Then pass its "
            f"location with --data (or the path argument)."
        )
    return p


def read_npz(path: Path, keys: tuple[str, ...], what: str) -> list:
    """The arrays ``keys`` of an .npz file (no pickles); ValueError naming the file if it is
    empty, truncated, corrupt or lacks a key."""
    import zipfile
    import zlib

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in keys if k not in d.files]
            if missing:
                raise ValueError(f"{path}: not a {what} .npz: missing {missing} (it has "
                                 f"{sorted(d.files)})")
            return [d[k] for k in keys]
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path}: not a readable {what} .npz ({e})") from None
    except ValueError as e:
        if str(e).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: not a readable {what} .npz ({e})") from None
