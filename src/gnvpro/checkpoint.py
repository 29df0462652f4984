"""Model and optimiser in one checkpoint (optimiser state dicts hold optimiser state only).

    save_checkpoint(path, model, opt, step=k)     # atomic: temporary file, then rename
    extra = load_checkpoint(path, model, opt)     # everything checked before anything changes
    state = checkpoint_state(model, opt); restore(model, opt, state)      # the same, in memory
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .methods.base import Method
from .validate import describe

__all__ = ["checkpoint_state", "load_checkpoint", "restore", "save_checkpoint"]


def checkpoint_state(model: nn.Module, optimizer: Method, **extra: Any) -> dict:
    """{"model": copies of model.state_dict(), "optimizer": optimizer.state_dict(), "extra"}."""
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "extra": extra}


def restore(model: nn.Module, optimizer: Method, state: dict) -> dict:
    """Load checkpoint_state's dict into model and optimiser; return its extra. The model part is
    checked first (keys, shapes, finite values) and the optimiser's refusal undoes the model's
    load: a refused state changes nothing."""
    if not isinstance(state, dict) or not {"model", "optimizer"} <= set(state):
        raise ValueError(f"not a gnvpro checkpoint (a dict with keys 'model' and 'optimizer' "
                         f"expected), got {describe(state)}")
    check_model_state(model, state["model"])
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except Exception:
        model.load_state_dict(backup)
        raise
    return dict(state.get("extra") or {})


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: Method,
                    **extra: Any) -> None:
    """Write checkpoint_state(model, optimizer, **extra) to path atomically (a crash leaves the
    previous file)."""
    path = Path(path)
    buf = io.BytesIO()  # serialised in memory: a full disk is an OSError naming the file
    torch.save(checkpoint_state(model, optimizer, **extra), buf)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()  # a failed write leaves no temporary file
        if isinstance(e, OSError) and not e.filename:  # a full disk: name the file
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: Method) -> dict:
    """restore() from save_checkpoint's file (tensors only: torch.load(weights_only=True))."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        text = str(e).strip()
        if "weights only load failed" in text.lower() or "weights_only" in text:
            why = "it holds objects other than tensors and plain data, so it was not unpickled"
        else:
            why = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
        raise ValueError(f"{path}: not a readable checkpoint ({why})") from None
    return restore(model, optimizer, state)


def check_model_state(model: nn.Module, msd: object) -> None:
    """state['model'] fits `model` exactly: same keys, tensors of the same shapes, finite."""
    if not isinstance(msd, dict):
        raise TypeError(f"state_dict['model'] must be a dict of tensors, got {describe(msd)}")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(msd)), sorted(set(msd) - set(own))
    if missing or unexpected:
        raise ValueError(f"state_dict['model'] does not fit this model: missing keys {missing}, "
                         f"unexpected keys {unexpected}")
    for k, v in msd.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"state_dict['model'][{k!r}] must be a tensor, got {describe(v)}")
        if v.shape != own[k].shape:
            raise ValueError(f"state_dict['model'][{k!r}] has shape {tuple(v.shape)} but the "
                             f"model's is {tuple(own[k].shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"state_dict['model'][{k!r}] contains NaN/Inf values")
