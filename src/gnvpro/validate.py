"""Up-front checks of what a user passes to GNvpro: every error names the argument, what was
expected and what was given, and is raised before anything changes.

TypeError for a wrong kind of value (a str where a number belongs, a list where a tensor does),
ValueError for a wrong value (a negative budget, NaN, a shape that does not fit the model).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .head import HeadSplit

__all__ = [
    "check_batch",
    "check_model",
    "check_real",
    "config_from_dict",
    "choices",
    "describe",
    "in_range",
    "settings_dict",
    "validate_config",
]

# data larger than this (in absolute value) overflows the float64 Gram matrices of the W solve
MAX_ABS_INPUT = 1e12


def describe(v: Any) -> str:
    """A short description of a value for error messages: ``'5' (str)``, ``a tensor ...``."""
    if isinstance(v, Tensor):
        return f"a tensor of shape {tuple(v.shape)}, dtype {v.dtype} on {v.device}"
    if hasattr(v, "shape") and hasattr(v, "dtype"):  # NumPy arrays and the like
        return f"a {type(v).__name__} of shape {tuple(v.shape)}, dtype {v.dtype}"
    r = " ".join(repr(v).split())
    if len(r) > 60:
        r = r[:57] + "..."
    return f"{r} ({type(v).__name__})"


def _range_text(low: float | None, low_incl: bool, high: float | None, high_incl: bool) -> str:
    if low is not None and high is not None:
        return f"in {'[' if low_incl else '('}{low:g}, {high:g}{']' if high_incl else ')'}"
    if low is not None:
        return f"{'>=' if low_incl else '>'} {low:g}"
    if high is not None:
        return f"{'<=' if high_incl else '<'} {high:g}"
    return "a number"


def check_real(
    name: str,
    v: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    low_inclusive: bool = True,
    high: float | None = None,
    high_inclusive: bool = True,
    finite: bool = True,
) -> Any:
    """``v`` as an int (``integer``) or float, checked for type, NaN, inf and range."""
    if isinstance(v, Tensor) and v.numel() == 1 and not v.is_complex():
        v = v.item()
    kind = "an integer" if integer else "a real number"
    ok = isinstance(v, numbers.Integral if integer else numbers.Real) and not isinstance(v, bool)
    if not ok:
        raise TypeError(f"{name} must be {kind}, got {describe(v)}")
    x = int(v) if integer else float(v)
    rng = _range_text(low, low_inclusive, high, high_inclusive)
    if math.isnan(x) or (finite and math.isinf(x)):
        where = "" if low is None and high is None else " " + rng
        raise ValueError(f"{name} must be a finite number{where}, got {x}")
    too_low = low is not None and (x < low if low_inclusive else x <= low)
    too_high = high is not None and (x > high if high_inclusive else x >= high)
    if too_low or too_high:
        raise ValueError(f"{name} must be {rng}, got {x:g}")
    return x


# ---------------------------------------------------------------------------- configurations
def in_range(**rule: Any) -> dict[str, Any]:
    """Field metadata declaring a numeric field's range, the keywords of :func:`check_real`:
    ``field(default=20, metadata=in_range(low=1))``."""
    return {"range": dict(rule)}


def choices(*values: str) -> dict[str, Any]:
    """Field metadata declaring a string field's allowed values."""
    return {"choices": tuple(values)}


def _metadata(cls: type, name: str) -> Mapping[str, Any]:
    """The metadata of field ``name`` of dataclass ``cls``, inherited from the nearest base that
    declares some (a subclass that only changes the default keeps the base's range)."""
    for k in getattr(cls, "__mro__", ()):
        f = getattr(k, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata:
            return f.metadata
    return {}


# a numeric field without declared range: int fields must be >= 0, float fields not NaN and
# >= 0 (a field's own default is always accepted, so settings added later never break it)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _check_field(name: str, v: Any, tp: Any, default: Any,
                 meta: Mapping[str, Any] | None = None) -> Any:
    """The checked (possibly normalised, e.g. numpy int -> int) value of one dataclass field;
    ``meta``: its metadata (:func:`in_range`, :func:`choices`)."""
    meta = meta or {}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return v
        rest = [a for a in args if a is not type(None)]
        if len(rest) > 1 and all(hasattr(a, "kind") and dataclasses.is_dataclass(a)
                                 for a in rest):
            return _check_kind(name, v, rest, default)
        if len(rest) != 1:  # a union we cannot check generically
            return v
        tp, origin, args = rest[0], typing.get_origin(rest[0]), typing.get_args(rest[0])
    if origin is typing.Literal:
        if v not in args:
            allowed = ", ".join(map(repr, args))
            raise ValueError(f"{name} must be one of {allowed}, got {describe(v)}")
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be True or False, got {describe(v)}")
        return v
    if tp is int or tp is float:
        rule = meta.get("range")
        if rule is None:
            rule = {"low": 0} if tp is int else {"low": 0.0, "finite": False}
        if default is not dataclasses.MISSING and type(v) is type(default) and v == default:
            return v
        return check_real(name, v, integer=tp is int, **rule)
    if tp is str:
        if not isinstance(v, str):
            raise TypeError(f"{name} must be a string, got {describe(v)}")
        allowed = meta.get("choices")
        if allowed is not None and v not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {v!r}")
        return v
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if hasattr(tp, "kind"):  # one kind of descent or search: as a union of one
            return _check_kind(name, v, [tp], default)
        if isinstance(v, Mapping):
            v = _dataclass_from_dict(tp, v, name)
        if not isinstance(v, tp):
            raise TypeError(f"{name} must be a {tp.__name__}, got {describe(v)}")
        validate_config(v, name)
        return v
    return v


def _check_kind(name: str, v: Any, classes: list[type], default: Any) -> Any:
    """A field that is one of several settings dataclasses told apart by their ``kind`` (a
    descent, a search): an instance, or a dict with ``kind`` (without it: the kind of the
    field's default) and that class's fields."""
    kinds = {c.kind: c for c in classes}
    if isinstance(v, Mapping):
        d = dict(v)
        kind = d.pop("kind", getattr(default, "kind", None))
        if kind not in kinds:
            raise ValueError(f"{name}.kind must be one of {', '.join(map(repr, kinds))}, got "
                             f"{describe(kind)}")
        v = _dataclass_from_dict(kinds[kind], d, name)
    if not isinstance(v, tuple(classes)):
        raise TypeError(f"{name} must be one of {', '.join(c.__name__ for c in classes)} (or a "
                        f"dict with 'kind' one of {', '.join(map(repr, kinds))}), got "
                        f"{describe(v)}")
    validate_config(v, name)
    return v


def settings_dict(cfg: Any) -> dict[str, Any]:
    """A settings dataclass as plain values, nested ones as dicts; a dataclass with a ``kind``
    (a descent, a search) names it, so ``config_from_dict`` rebuilds the same object."""
    out: dict[str, Any] = {"kind": cfg.kind} if hasattr(cfg, "kind") else {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = settings_dict(v) if dataclasses.is_dataclass(v) else v
    return out


def validate_config(cfg: Any, name: str | None = None) -> None:
    """Check every field of a settings dataclass (GNvproConfig, RadiusRule, ...) by its type
    annotation and range; numbers are normalised to int / float in place."""
    cls = type(cfg)
    prefix = name or cls.__name__
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - unresolvable annotations: check nothing
        return
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        new = _check_field(f"{prefix}.{f.name}", v, hints.get(f.name), _default(f),
                           _metadata(cls, f.name))
        if new is not v:
            object.__setattr__(cfg, f.name, new)
    if {"eta_reject", "eta_shrink", "eta_expand"} <= {f.name for f in dataclasses.fields(cfg)}:
        a, b, c = cfg.eta_reject, cfg.eta_shrink, cfg.eta_expand
        if not a <= b <= c:
            raise ValueError(f"{prefix}: need eta_reject <= eta_shrink <= eta_expand, got "
                             f"{a:g}, {b:g}, {c:g}")


def _dataclass_from_dict(cls: type, d: Any, name: str) -> Any:
    if not isinstance(d, Mapping):
        raise TypeError(f"{name} must be a dict of {cls.__name__} fields, got {describe(d)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, d)) - known)
    if unknown:
        raise ValueError(f"{name} has unknown setting(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))}")
    return cls(**dict(d))


def config_from_dict(cls: type, d: Any, name: str = "config") -> Any:
    """``cls(**d)`` for a settings dataclass, nested dataclasses from dicts, all validated; a
    dict of an earlier version is read through ``cls.upgrade`` where the class has one."""
    if isinstance(d, Mapping) and hasattr(cls, "upgrade"):
        d = cls.upgrade(d)
    return _dataclass_from_dict(cls, d, name)


# -------------------------------------------------------------------------------------- model
_RANDOM_IN_TRAINING = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def check_model(split: HeadSplit, finite: bool = False) -> None:
    """A model GNvpro can train: materialised, one device and dtype, finite weights, its own
    head weights (not tied to another layer), deterministic (no dropout / batch norm in
    training mode). finite=True: the caller knows the weights are finite (the method's own,
    unchanged since it wrote them), and the scan over every weight is skipped."""
    model, head = split.model, split.head
    named = list(model.named_parameters(remove_duplicate=False))
    for k, p in named:
        if p.is_meta:
            raise ValueError(
                f"model parameter {k!r} is on the 'meta' device (it holds no values): "
                "materialise the model first, e.g. model.to_empty(device='cpu') and initialise "
                "its weights"
            )
    devices = sorted({str(p.device) for _, p in named})
    if len(devices) > 1:
        raise ValueError(f"the model's parameters are on several devices ({', '.join(devices)}): "
                         "move the whole model with model.to(device)")
    dtypes = sorted({str(p.dtype) for _, p in named if p.requires_grad})
    if len(dtypes) > 1:
        raise TypeError(f"the model's trainable parameters have several dtypes "
                        f"({', '.join(dtypes)}): convert the whole model, e.g. model.double()")
    for k, p in named:
        if not p.is_floating_point():
            raise TypeError(f"model parameter {k!r} has dtype {p.dtype}; GNvpro trains "
                            "floating-point parameters only")
    if finite or named and bool(torch.stack([torch.isfinite(p.detach()).all()
                                             for _, p in named]).all()):
        named_bad: list = []  # one device sync for the whole model (this runs every step)
    else:
        named_bad = named
    for k, p in named_bad:
        if not bool(torch.isfinite(p.detach()).all()):
            bad = int((~torch.isfinite(p.detach())).sum())
            raise ValueError(f"model parameter {k!r} contains {bad} NaN/Inf value(s): "
                             "re-initialise the model or load finite weights")
    for k, m in model.named_modules(remove_duplicate=False):
        if m is head and k != split.head_name:
            raise ValueError(f"the head {split.head_name!r} is also registered as {k!r} (one "
                             "layer used twice): GNvpro needs a head of its own, applied last")
    prefix = split.head_name + "."
    own = [head.weight] + ([head.bias] if head.bias is not None else [])
    ptrs = {t.untyped_storage().data_ptr(): n for t, n in zip(own, ("weight", "bias"),
                                                               strict=False)}
    for k, p in named:
        if k.startswith(prefix):
            continue
        which = next((n for t, n in zip(own, ("weight", "bias"), strict=False) if p is t), None)
        if which is None and p.numel() and p.untyped_storage().data_ptr() in ptrs:
            which = ptrs[p.untyped_storage().data_ptr()]
        if which is not None:
            raise ValueError(
                f"the head {split.head_name!r} shares its {which} with {k!r} (tied weights): "
                "GNvpro replaces the head by the solved W*, so the head's weights must be its "
                "own. Untie them, e.g. give the other layer nn.Parameter(w.detach().clone())"
            )
    bad = [(k or type(m).__name__, type(m).__name__) for k, m in model.named_modules()
           if m.training and isinstance(m, _RANDOM_IN_TRAINING)]
    if bad:
        kinds = sorted({"dropout" if "Dropout" in t else "batch norm" for _, t in bad})
        names = ", ".join(f"{k!r} ({t})" for k, t in bad[:4]) + (" ..." if len(bad) > 4 else "")
        raise ValueError(
            f"the model is in training mode and has {' and '.join(kinds)} layers ({names}): "
            "they make model(x) random or change running statistics, which GNvpro cannot "
            "optimise. Call model.eval() before training with GNvpro"
        )


def model_dtype_device(split: HeadSplit) -> tuple[torch.dtype, torch.device]:
    p = next(iter(split.feature_params().values()))
    return p.dtype, p.device


def _first_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The first module of a (nested) nn.Sequential if it is nn.Linear (applied to x first)."""
    name, m = "", model
    while isinstance(m, nn.Sequential) and len(m) > 0:
        name, m = (f"{name}.0" if name else "0"), m[0]
    return (name, m) if isinstance(m, nn.Linear) and m is not model else None


def check_batch(split: HeadSplit, x: Any, y: Any, xname: str = "x", yname: str = "y") -> None:
    """Types, shapes, dtype, device and finiteness of an input batch (x, y) for the model."""
    for name, t in ((xname, x), (yname, y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {describe(t)}")
    dtype, device = model_dtype_device(split)
    if x.ndim < 2:
        raise ValueError(
            f"{xname} must have shape (n, features...) with the samples in dim 0, got shape "
            f"{tuple(x.shape)}: for one feature per sample use {xname}.reshape(-1, 1)"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{xname} is empty (0 samples): at least one sample is needed")
    n_y = y.shape[0] if y.ndim > 0 else None
    if n_y != x.shape[0]:
        raise ValueError(f"{xname} has {x.shape[0]} samples but {yname} has "
                         f"{'no dim 0 (0-d)' if n_y is None else n_y}: they must match in dim 0")
    if x.is_floating_point():
        if x.dtype != dtype:
            raise TypeError(f"{xname} has dtype {x.dtype} but the model's parameters are {dtype}:"
                            f" convert with {xname}.to({dtype}) (or the model with "
                            f"model.to({x.dtype}))")
    elif not any(isinstance(m, nn.Embedding) for m in split.model.modules()):
        raise TypeError(f"{xname} has dtype {x.dtype}; the model needs floating-point input: "
                        f"convert with {xname}.to({dtype})")
    for name, t in ((xname, x), (yname, y)):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but the model is on {device}: move it "
                             f"with {name}.to('{device}')")
    first = _first_linear(split.model)
    if first is not None and x.shape[-1] != first[1].in_features:
        raise ValueError(
            f"{xname} has {x.shape[-1]} features per sample (shape {tuple(x.shape)}) but the "
            f"model's first layer {first[0]!r} is nn.Linear({first[1].in_features}, ...): pass "
            f"{xname} of shape (n, {first[1].in_features})"
        )
    if x.is_floating_point() or x.is_complex():
        fin = torch.isfinite(x)
        if not bool(fin.all()):
            raise ValueError(f"{xname} contains {int((~fin).sum())} NaN/Inf value(s): remove or "
                             "impute those samples first")
        big = float(x.detach().abs().max())
        if big > MAX_ABS_INPUT:
            raise ValueError(f"{xname} has entries as large as {big:.3g} (> {MAX_ABS_INPUT:g}): "
                             "GNvpro's float64 solves overflow at this scale; standardise "
                             f"{xname}, e.g. ({xname} - mean) / std")
