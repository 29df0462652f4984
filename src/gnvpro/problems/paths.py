"""Where the shared data files live, and clear errors when they are missing."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "GNVPRO_DATA"


def shared_data_dir() -> Path | None:
    """The shared data directory, or None if none is found.

    Order: ``$GNVPRO_DATA`` if set; else ``<repo>/../shared/data`` (the repository root is found
    relative to this file); else ``../shared/data`` relative to the current directory.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    candidates = [
        Path(__file__).resolve().parents[3].parent / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
    ]
    for cand in candidates:
        if cand.is_dir():
            return cand
    return None


def default_data_file(name: str) -> Path:
    """``shared_data_dir() / name``, or a bare relative path if no data directory is found."""
    base = shared_data_dir()
    return (base / name) if base is not None else Path(name)


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
