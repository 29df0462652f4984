"""Bad inputs (issue 13): every refused call raises a clear error naming its cause, and changes
nothing; every bad command line is one line on stderr and exit code 2, never a traceback.

API_CASES and CLI_CASES are tables: (id, what to do, expected error type, regex of the cause).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from torch import nn

from gnvpro import (
    GNvpro,
    GNvproConfig,
    LanczosSubspace,
    LBFGSTwoLoop,
    LBFGSVarProConfig,
    PreconditionedCG,
    RadiusRule,
    Steihaug,
    StrongWolfe,
    TrustRegion,
)
from gnvpro.checkpoint import checkpoint_state, restore
from gnvpro_experiments import cli
from gnvpro_experiments.models import mlp

F64 = torch.float64


# ------------------------------------------------------------------------------------ helpers
@dataclass
class Env:
    model: nn.Sequential
    x: torch.Tensor
    y: torch.Tensor
    opt: GNvpro


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g, dtype=F64)
    y = torch.stack([torch.sin(x[:, 0]) + x[:, 1] ** 2, torch.cos(x[:, 2]) * x[:, 0]], 1)
    return x, y


def _model(seed: int = 0) -> nn.Sequential:
    return mlp(3, [4], 2, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _env() -> Env:
    """A tiny model 3 -> 4 -> 2 and an optimiser that has taken one step."""
    x, y = _data()
    model = _model()
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6,
                 config=GNvproConfig(descent=PreconditionedCG(max_products=4)))
    opt.step(x, y)
    return Env(model, x, y, opt)


def _snapshot(e: Env) -> dict:
    s = e.opt.state
    return {
        "model": {k: v.detach().clone() for k, v in e.model.state_dict().items()},
        "training": [m.training for m in e.model.modules()],
        "state": s, "radius": s.radius, "work": s.work, "iteration": s.iteration,
        "config": e.opt.config, "alphas": (e.opt.alpha_w, e.opt.alpha_theta),
        "batch": e.opt._batch, "objective": e.opt.objective,
    }


def _assert_unchanged(before: dict, e: Env) -> None:
    after = _snapshot(e)
    assert after["model"].keys() == before["model"].keys()
    for k, v in before["model"].items():
        torch.testing.assert_close(after["model"][k], v, rtol=0, atol=0, equal_nan=True,
                                   msg=f"model weight {k} changed")
    for k in ("state", "batch", "objective", "config"):
        assert after[k] is before[k], f"optimiser {k} changed"
    for k in ("radius", "work", "iteration", "alphas", "training"):
        assert after[k] == before[k], f"optimiser {k} changed"


def _seq(*mods: nn.Module) -> nn.Sequential:
    return nn.Sequential(*mods).to(F64)


def _tied() -> nn.Sequential:
    m = _seq(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2))
    m[2].weight = m[4].weight
    return m


def _shared_storage() -> nn.Sequential:
    m = _seq(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2))
    m[2].weight = nn.Parameter(m[4].weight.data)
    return m


class _TwiceRegistered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)
        self.alias = self.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.body(x)))


class _Noisy(nn.Module):
    """Random output in any mode (not a dropout layer): caught by two probe evaluations."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.body(x))
        return self.out(z + 0.1 * torch.randn_like(z))


class _Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def _meta() -> nn.Sequential:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _frozen_features() -> nn.Sequential:
    m = _model()
    for p in m[0].parameters():
        p.requires_grad_(False)
    return m


def _mixed_dtypes() -> nn.Sequential:
    m = _model()
    m[0].float()
    return m


def _with(t: torch.Tensor, idx: tuple, value: float) -> torch.Tensor:
    t = t.clone()
    t[idx] = value
    return t


def _labels(e: Env, values: list) -> torch.Tensor:
    return torch.tensor((values * 12)[:12])


def _ce(model: nn.Module | None = None) -> GNvpro:
    return GNvpro(model or _model(), loss="cross_entropy", alpha_w=1e-3)


def _sd(e: Env, **changes: Any) -> dict:
    sd = e.opt.state_dict()
    sd.update(changes)
    return sd


def _ck_model(e: Env, fn) -> dict:
    """A model+optimiser checkpoint (gnvpro.checkpoint) with its model part changed by fn."""
    ck = checkpoint_state(e.model, e.opt)
    fn(ck["model"])
    return ck


def _set_nan_weight(e: Env) -> None:
    with torch.no_grad():
        e.model[0].weight[0, 0] = float("nan")


@dataclass(frozen=True)
class _LaterConfig(GNvproConfig):
    """Fields another engineer might add later: checked by type without any new code."""

    n_workers: int | None = None
    damping: float = 0.5
    mode: Literal["fast", "exact"] = "fast"
    verbose: bool = False
    label: str = "x"


# --------------------------------------------------------------------------------- API cases
# (id, call(env), error type, regex that names the cause[, prep(env) run before the snapshot])
NAN, INF = float("nan"), float("inf")
API_CASES: list[tuple] = [
    # ---- the model and the constructor
    ("model-not-module", lambda e: GNvpro(42), TypeError, r"model must be a torch\.nn\.Module"),
    ("model-no-linear-last", lambda e: GNvpro(_seq(nn.Linear(3, 2), nn.Tanh())), TypeError,
     r"nn\.Linear"),
    ("model-bare-linear", lambda e: GNvpro(nn.Linear(3, 2)), TypeError, r"head="),
    ("model-only-head", lambda e: GNvpro(_seq(nn.Linear(3, 2))), ValueError,
     r"no trainable parameters outside its head"),
    ("model-frozen-features", lambda e: GNvpro(_frozen_features()), ValueError,
     r"no trainable parameters outside its head"),
    ("head-not-str", lambda e: GNvpro(_Named().double(), head=5), TypeError,
     r"head must be .*got 5"),
    ("head-missing", lambda e: GNvpro(_Named().double(), head="nope"), ValueError,
     r"no submodule named 'nope'"),
    ("head-not-linear", lambda e: GNvpro(_Named().double(), head="body"), TypeError,
     r"'body' is a Sequential, not nn\.Linear"),
    ("loss-unknown", lambda e: GNvpro(_model(), loss="hinge"), ValueError,
     r"unknown loss 'hinge'"),
    ("loss-not-str", lambda e: GNvpro(_model(), loss=42), TypeError, r"loss must be .*42"),
    ("alpha_w-nan", lambda e: GNvpro(_model(), alpha_w=NAN), ValueError,
     r"alpha_w must be a finite number"),
    ("alpha_w-inf", lambda e: GNvpro(_model(), alpha_w=INF), ValueError,
     r"alpha_w must be a finite number"),
    ("alpha_w-negative", lambda e: GNvpro(_model(), alpha_w=-1.0), ValueError,
     r"alpha_w must be >= 0, got -1"),
    ("alpha_w-str", lambda e: GNvpro(_model(), alpha_w="1e-3"), TypeError,
     r"alpha_w must be a real number, got '1e-3' \(str\)"),
    ("alpha_w-bool", lambda e: GNvpro(_model(), alpha_w=True), TypeError, r"alpha_w .*bool"),
    ("alpha_theta-nan", lambda e: GNvpro(_model(), alpha_theta=NAN), ValueError,
     r"alpha_theta must be a finite"),
    ("alpha_theta-negative", lambda e: GNvpro(_model(), alpha_theta=-2), ValueError,
     r"alpha_theta must be >= 0"),
    ("alpha_theta-none", lambda e: GNvpro(_model(), alpha_theta=None), TypeError,
     r"alpha_theta must be a real number, got None"),
    ("alpha_w-zero-classifier", lambda e: GNvpro(_model(), loss="cross_entropy", alpha_w=0),
     ValueError, r"alpha_w must be > 0 for the cross_entropy loss"),
    ("config-dict", lambda e: GNvpro(_model(), config={"descent": {"max_products": 5}}), TypeError,
     r"config must be a gnvpro\.GNvproConfig"),
    ("regularizer-not-callable", lambda e: GNvpro(_model(), regularizer=5), TypeError,
     r"regularizer must be a callable"),
    ("meta-device-model", lambda e: GNvpro(_meta()), ValueError, r"'meta' device.*to_empty"),
    ("nan-initial-weight", lambda e: GNvpro(_set_nan(_model(), 0)), ValueError,
     r"parameter '0\.weight' contains 1 NaN/Inf"),
    ("inf-head-bias", lambda e: GNvpro(_set_nan(_model(), 2, "bias", INF)), ValueError,
     r"parameter '2\.bias' contains 1 NaN/Inf"),
    ("dropout-train-mode", lambda e: GNvpro(_seq(nn.Linear(3, 4), nn.Dropout(0.2), nn.Tanh(),
                                                 nn.Linear(4, 2))), ValueError,
     r"training mode .*dropout.*'1' \(Dropout\).*model\.eval\(\)"),
    ("alpha-dropout-train-mode", lambda e: GNvpro(_seq(nn.Linear(3, 4), nn.AlphaDropout(0.2),
                                                       nn.Linear(4, 2))), ValueError,
     r"dropout.*model\.eval\(\)"),
    ("batchnorm-train-mode", lambda e: GNvpro(_seq(nn.Linear(3, 4), nn.BatchNorm1d(4),
                                                   nn.Tanh(), nn.Linear(4, 2))), ValueError,
     r"batch norm.*'1' \(BatchNorm1d\).*model\.eval\(\)"),
    ("tied-head-weight", lambda e: GNvpro(_tied()), ValueError,
     r"head '4' shares its weight with '2\.weight' \(tied weights\)"),
    ("shared-storage-head", lambda e: GNvpro(_shared_storage()), ValueError,
     r"shares its weight with '2\.weight'"),
    ("head-registered-twice", lambda e: GNvpro(_TwiceRegistered().double(), head="out"),
     ValueError, r"also registered as 'alias'"),
    ("mixed-dtypes", lambda e: GNvpro(_mixed_dtypes()), TypeError, r"several dtypes"),
    # ---- GNvproConfig: every field by type and range
    ("cfg-max_products-str", lambda e: PreconditionedCG(max_products="5"), TypeError,
     r"PreconditionedCG\.max_products must be an integer, got '5' \(str\)"),
    ("cfg-max_products-zero", lambda e: PreconditionedCG(max_products=0), ValueError,
     r"PreconditionedCG\.max_products must be >= 1, got 0"),
    ("cfg-max_products-negative", lambda e: LanczosSubspace(max_products=-3), ValueError,
     r"max_products must be >= 1"),
    ("cfg-max_products-float", lambda e: Steihaug(max_products=2.5), TypeError,
     r"max_products must be an integer, got 2\.5"),
    ("cfg-max_products-bool", lambda e: PreconditionedCG(max_products=True), TypeError,
     r"max_products must be an integer, got True \(bool\)"),
    ("cfg-rtol-nan", lambda e: PreconditionedCG(rtol=NAN), ValueError,
     r"rtol must be a finite number in \[0, 1\)"),
    ("cfg-rtol-negative", lambda e: LanczosSubspace(rtol=-0.1), ValueError,
     r"rtol must be in \[0, 1\), got -0\.1"),
    ("cfg-rtol-one", lambda e: Steihaug(rtol=1.5), ValueError, r"rtol must be in \[0, 1\)"),
    ("cfg-rtol-str", lambda e: PreconditionedCG(rtol="0.1"), TypeError,
     r"rtol must be a real number"),
    ("cfg-memory-negative", lambda e: LBFGSTwoLoop(memory=-1), ValueError,
     r"LBFGSTwoLoop\.memory must be >= 0"),
    ("cfg-descent-kind", lambda e: GNvproConfig(descent={"kind": "newton"}), ValueError,
     r"GNvproConfig\.descent\.kind must be one of 'lanczos', 'steihaug', 'cg', 'lbfgs', "
     r"'hybrid', got 'newton'"),
    ("cfg-descent-none", lambda e: GNvproConfig(descent=None), TypeError,
     r"GNvproConfig\.descent must be one of LanczosSubspace, Steihaug, PreconditionedCG"),
    ("cfg-descent-unknown-key", lambda e: GNvproConfig(descent={"max_krylov": 5}), ValueError,
     r"descent has unknown setting\(s\) max_krylov; known: cg_price, max_gap, max_products, "
     r"memory, probe_after, probe_share, rtol, start"),
    ("cfg-descent-search-mismatch", lambda e: GNvproConfig(descent=LanczosSubspace()),
     ValueError, r"the descent LanczosSubspace.* does not fit the search StrongWolfe; use one "
     r"of PreconditionedCG, LBFGSTwoLoop"),
    ("cfg-search-descent-mismatch", lambda e: GNvproConfig(search=TrustRegion()), ValueError,
     r"does not fit the search TrustRegion; use one of LanczosSubspace, Steihaug"),
    ("cfg-lbfgs-descent", lambda e: LBFGSVarProConfig(descent=PreconditionedCG()), TypeError,
     r"LBFGSVarProConfig\.descent must be one of LBFGSTwoLoop"),
    ("cfg-wolfe-c1-c2", lambda e: StrongWolfe(c1=0.95), ValueError, r"need c1 < c2"),
    ("cfg-wolfe-c2-one", lambda e: StrongWolfe(c2=1.0), ValueError, r"c2 must be in \(0, 1\)"),
    ("cfg-wolfe-max_evals", lambda e: StrongWolfe(max_evals=0), ValueError,
     r"StrongWolfe\.max_evals must be >= 1"),
    ("cfg-jacobian", lambda e: GNvproConfig(jacobian="half"), ValueError,
     r"jacobian must be one of 'full', 'kaufman'"),
    ("cfg-jvp_mode", lambda e: GNvproConfig(jvp_mode="fast"), ValueError,
     r"jvp_mode must be one of .*'jvp'.*got 'fast'"),
    ("cfg-gn_alpha_w-str", lambda e: GNvproConfig(gn_alpha_w="yes"), TypeError,
     r"gn_alpha_w must be True or False, got 'yes'"),
    ("cfg-gn_alpha_w-int", lambda e: GNvproConfig(gn_alpha_w=1), TypeError,
     r"gn_alpha_w must be True or False"),
    ("cfg-grad_rtol-negative", lambda e: GNvproConfig(grad_rtol=-1e-3), ValueError,
     r"grad_rtol must be >= 0"),
    ("cfg-grad_rtol-nan", lambda e: GNvproConfig(grad_rtol=NAN), ValueError,
     r"grad_rtol must be a finite number"),
    ("cfg-grad_atol-inf", lambda e: GNvproConfig(grad_atol=INF), ValueError,
     r"grad_atol must be a finite number"),
    ("cfg-inner_rtol-negative", lambda e: GNvproConfig(inner_rtol=-1.0), ValueError,
     r"inner_rtol must be >= 0"),
    ("cfg-inner_atol-nan", lambda e: GNvproConfig(inner_atol=NAN), ValueError,
     r"inner_atol must be a finite"),
    ("cfg-inner_max_iter-zero", lambda e: GNvproConfig(inner_max_iter=0), ValueError,
     r"inner_max_iter must be >= 1"),
    ("cfg-inner_max_iter-float", lambda e: GNvproConfig(inner_max_iter=1.5), TypeError,
     r"inner_max_iter must be an integer"),
    ("cfg-radius_rule-str", lambda e: TrustRegion(rule="x"), TypeError,
     r"TrustRegion\.rule must be a RadiusRule, got 'x'"),
    ("cfg-radius-shrink", lambda e: TrustRegion(rule=RadiusRule(shrink=2.0)), ValueError,
     r"rule\.shrink must be in \(0, 1\), got 2"),
    ("cfg-radius-expand", lambda e: TrustRegion(rule=RadiusRule(expand=0.5)),
     ValueError, r"rule\.expand must be >= 1"),
    ("cfg-radius-order", lambda e: TrustRegion(rule=RadiusRule(eta_reject=0.5)),
     ValueError, r"eta_reject <= eta_shrink <= eta_expand"),
    ("cfg-radius-max", lambda e: TrustRegion(rule=RadiusRule(max_radius_per_grad=0.0)),
     ValueError, r"max_radius_per_grad must be > 0"),
    ("cfg-radius-nan", lambda e: TrustRegion(rule=RadiusRule(eta_expand=NAN)),
     ValueError, r"eta_expand must be a finite"),
    ("cfg-radius-unknown-key", lambda e: TrustRegion(rule={"grow": 2.0}), ValueError,
     r"rule has unknown setting\(s\) grow"),
    ("cfg-min_radius-negative", lambda e: GNvproConfig.trust_region(
        search=TrustRegion(min_radius=-1.0)), ValueError, r"min_radius must be >= 0"),
    ("later-field-int-str", lambda e: _LaterConfig(n_workers="4"), TypeError,
     r"_LaterConfig\.n_workers must be an integer, got '4'"),
    ("later-field-int-negative", lambda e: _LaterConfig(n_workers=-2), ValueError,
     r"_LaterConfig\.n_workers must be >= 0"),
    ("later-field-float-nan", lambda e: _LaterConfig(damping=NAN), ValueError,
     r"_LaterConfig\.damping must be a finite number"),
    ("later-field-literal", lambda e: _LaterConfig(mode="slow"), ValueError,
     r"_LaterConfig\.mode must be one of 'fast', 'exact'"),
    ("later-field-bool", lambda e: _LaterConfig(verbose="no"), TypeError,
     r"_LaterConfig\.verbose must be True or False"),
    ("later-field-str", lambda e: _LaterConfig(label=3), TypeError,
     r"_LaterConfig\.label must be a string, got 3"),
    # ---- the batch (step / set_batch)
    ("x-list", lambda e: e.opt.step(e.x.tolist(), e.y), TypeError,
     r"x must be a torch\.Tensor, got \[\["),
    ("y-numpy", lambda e: e.opt.step(e.x, e.y.numpy()), TypeError,
     r"y must be a torch\.Tensor, got a ndarray of shape \(12, 2\)"),
    ("x-1d", lambda e: e.opt.step(e.x[:, 0], e.y), ValueError,
     r"x must have shape \(n, features\.\.\.\).*got shape \(12,\).*reshape\(-1, 1\)"),
    ("x-0d", lambda e: e.opt.step(e.x[0, 0], e.y), ValueError, r"x must have shape.*\(\)"),
    ("x-wrong-width", lambda e: e.opt.step(torch.randn(12, 5, dtype=F64), e.y), ValueError,
     r"x has 5 features per sample .*first layer '0' is nn\.Linear\(3, \.\.\.\)"),
    ("x-3d", lambda e: e.opt.step(e.x[:, None, :].expand(12, 2, 3).contiguous(), e.y),
     ValueError, r"features feeding the head .*flatten"),
    ("x-float32", lambda e: e.opt.step(e.x.float(), e.y), TypeError,
     r"x has dtype torch\.float32 but the model's parameters are torch\.float64"),
    ("x-int64", lambda e: e.opt.step(e.x.long(), e.y), TypeError,
     r"x has dtype torch\.int64; the model needs floating-point input"),
    ("x-bool", lambda e: e.opt.step(e.x > 0, e.y), TypeError, r"x has dtype torch\.bool"),
    ("x-complex", lambda e: e.opt.step(e.x.to(torch.complex128), e.y), TypeError,
     r"x has dtype torch\.complex128"),
    ("x-empty", lambda e: e.opt.step(e.x[:0], e.y[:0]), ValueError, r"x is empty \(0 samples\)"),
    ("x-y-samples", lambda e: e.opt.step(e.x, e.y[:-1]), ValueError,
     r"x has 12 samples but y has 11"),
    ("x-nan", lambda e: e.opt.step(_with(e.x, (3, 1), NAN), e.y), ValueError,
     r"x contains 1 NaN/Inf"),
    ("x-inf", lambda e: e.opt.step(_with(e.x, (0, 0), -INF), e.y), ValueError,
     r"x contains 1 NaN/Inf"),
    ("x-huge", lambda e: e.opt.step(e.x * 1e30, e.y), ValueError,
     r"x has entries as large as .*e\+30.*standardise x"),
    ("x-meta", lambda e: e.opt.step(e.x.to("meta"), e.y), ValueError,
     r"x is on meta but the model is on cpu"),
    ("y-meta", lambda e: e.opt.step(e.x, e.y.to("meta")), ValueError,
     r"y is on meta but the model is on cpu"),
    ("y-nan", lambda e: e.opt.step(e.x, _with(e.y, (2, 0), NAN)), ValueError,
     r"y: least-squares targets contain 1 NaN/Inf"),
    ("y-columns", lambda e: e.opt.step(e.x, e.y[:, :1]), ValueError,
     r"y: least-squares targets have 1 column\(s\) but n_outputs=2"),
    ("y-3d", lambda e: e.opt.step(e.x, e.y[:, :, None]), ValueError,
     r"y: least-squares targets must have shape \(n, c\)"),
    ("y-0d", lambda e: e.opt.step(e.x, e.y[0, 0]), ValueError,
     r"x has 12 samples but y has no dim 0"),
    ("y-complex", lambda e: e.opt.step(e.x, e.y.to(torch.complex128)), ValueError,
     r"y: least-squares targets must be real"),
    ("ce-label-range", lambda e: _ce().step(e.x, _labels(e, [0, 1, 2])), ValueError,
     r"y: cross-entropy class labels must lie in \[0, 2\)"),
    ("ce-label-float", lambda e: _ce().step(e.x, _labels(e, [0.5, 1.0])), ValueError,
     r"y: cross-entropy targets must be integer class labels"),
    ("ce-one-class", lambda e: _ce().step(e.x, _labels(e, [1])), ValueError,
     r"y: only one class \(1\) is present"),
    ("ce-one-hot-rows", lambda e: _ce().step(e.x, torch.ones(12, 2)), ValueError,
     r"y: one-hot cross-entropy target rows must sum to 1"),
    ("ce-column-of-labels", lambda e: _ce().step(e.x, _labels(e, [0, 1])[:, None]), ValueError,
     r"y: cross-entropy targets of shape \(12, 1\) look like a column"),
    ("logistic-labels", lambda e: GNvpro(mlp(3, [4], 1, dtype=F64), loss="logistic",
                                         alpha_w=1e-3).step(e.x, _labels(e, [0, 2])),
     ValueError, r"y: .*0"),
    ("softmax-after-head", lambda e: GNvpro(_SoftmaxAfterHead().double(), head="out").step(
        e.x, e.y), ValueError, r"not the model's last operation"),
    ("named-head-wrong-width", lambda e: GNvpro(_Named().double(), head="out").step(
        torch.randn(12, 7, dtype=F64), e.y), ValueError,
     r"the model fails on x of shape \(12, 7\) and dtype torch\.float64"),
    ("random-model", lambda e: GNvpro(_Noisy().double(), head="out").step(e.x, e.y),
     ValueError, r"differs between two calls.*model\.eval\(\)"),
    ("step-after-nan-weight", lambda e: e.opt.step(e.x, e.y), ValueError,
     r"parameter '0\.weight' contains 1 NaN/Inf", _set_nan_weight),
    ("step-after-train-mode", lambda e: e.opt.step(e.x, e.y), ValueError,
     r"dropout.*model\.eval\(\)", lambda e: _add_dropout_in_train_mode(e)),
    ("set_batch-x-float32", lambda e: e.opt.set_batch(e.x.float(), e.y), TypeError,
     r"x has dtype torch\.float32"),
    # ---- run()
    ("run-max_work-negative", lambda e: e.opt.run(e.x, e.y, max_work=-5), ValueError,
     r"max_work must be >= 0, got -5"),
    ("run-max_work-nan", lambda e: e.opt.run(e.x, e.y, max_work=NAN), ValueError,
     r"max_work must be a number >= 0|max_work must be a finite|max_work .*nan"),
    ("run-max_work-str", lambda e: e.opt.run(e.x, e.y, max_work="10"), TypeError,
     r"max_work must be a real number, got '10'"),
    ("run-max_iter-negative", lambda e: e.opt.run(e.x, e.y, max_iter=-1), ValueError,
     r"max_iter must be >= 0, got -1"),
    ("run-max_iter-float", lambda e: e.opt.run(e.x, e.y, max_iter=2.5), TypeError,
     r"max_iter must be an integer, got 2\.5"),
    ("run-max_iter-bool", lambda e: e.opt.run(e.x, e.y, max_iter=True), TypeError,
     r"max_iter must be an integer, got True"),
    ("run-no-budget", lambda e: e.opt.run(e.x, e.y), ValueError,
     r"needs a budget: give max_work or max_iter"),
    ("run-infinite-work-only", lambda e: e.opt.run(e.x, e.y, max_work=INF), ValueError,
     r"needs a budget"),
    ("run-val-single", lambda e: e.opt.run(e.x, e.y, max_iter=1, val=(e.x,)), TypeError,
     r"val must be a pair \(x_val, y_val\)"),
    ("run-val-tensor", lambda e: e.opt.run(e.x, e.y, max_iter=1, val=e.x), TypeError,
     r"val must be a pair"),
    ("run-val-x-width", lambda e: e.opt.run(e.x, e.y, max_iter=1,
                                            val=(torch.randn(4, 5, dtype=F64), e.y[:4])),
     ValueError, r"val\[0\] \(x_val\) has 5 features per sample"),
    ("run-val-y-columns", lambda e: e.opt.run(e.x, e.y, max_iter=1, val=(e.x[:4], e.y[:4, :1])),
     ValueError, r"val\[1\] \(y_val\): least-squares targets have 1 column"),
    ("run-val-samples", lambda e: e.opt.run(e.x, e.y, max_iter=1, val=(e.x[:5], e.y[:4])),
     ValueError, r"val\[0\] \(x_val\) has 5 samples but val\[1\] \(y_val\) has 4"),
    ("run-val-nan", lambda e: e.opt.run(e.x, e.y, max_iter=1,
                                        val=(_with(e.x[:4], (0, 0), NAN), e.y[:4])),
     ValueError, r"val\[0\] \(x_val\) contains 1 NaN/Inf"),
    ("run-val-dtype", lambda e: e.opt.run(e.x, e.y, max_iter=1, val=(e.x[:4].float(), e.y[:4])),
     TypeError, r"val\[0\] \(x_val\) has dtype torch\.float32"),
    ("run-callback", lambda e: e.opt.run(e.x, e.y, max_iter=1, callback=5), TypeError,
     r"callback must be callable"),
    ("run-x-wrong-width", lambda e: e.opt.run(torch.randn(12, 4, dtype=F64), e.y, max_iter=1),
     ValueError, r"x has 4 features per sample"),
    # ---- evaluate()
    ("evaluate-x-width", lambda e: e.opt.evaluate(torch.randn(3, 2, dtype=F64), e.y[:3]),
     ValueError, r"x has 2 features per sample"),
    ("evaluate-y-nan", lambda e: e.opt.evaluate(e.x, _with(e.y, (0, 1), NAN)), ValueError,
     r"NaN/Inf"),
    ("evaluate-x-list", lambda e: e.opt.evaluate([1.0, 2.0], e.y), TypeError,
     r"x must be a torch\.Tensor"),
    ("evaluate-y-columns", lambda e: e.opt.evaluate(e.x, e.y[:, :1]), ValueError,
     r"1 column\(s\) but n_outputs=2"),
    ("evaluate-x-1d", lambda e: e.opt.evaluate(e.x[0], e.y[:1]), ValueError,
     r"x must have shape \(n, features"),
    # ---- load_state_dict(): all or nothing
    ("load-int", lambda e: e.opt.load_state_dict(42), TypeError,
     r"load_state_dict expects the dict of GNvpro\.state_dict\(\), got 42 \(int\)"),
    ("load-missing", lambda e: e.opt.load_state_dict({"radius": 1.0}), ValueError,
     r"not a GNvpro state dict: missing \['iteration', 'work'\]"),
    ("load-checkpoint-as-state-dict", lambda e: e.opt.load_state_dict(
        checkpoint_state(e.model, e.opt)), ValueError,
     r"looks like a model\+optimiser checkpoint: load it with gnvpro\.load_checkpoint"),
    ("restore-not-checkpoint", lambda e: restore(e.model, e.opt, {"model": {}}), ValueError,
     r"not a gnvpro checkpoint \(a dict with keys 'model' and 'optimizer' expected\)"),
    ("load-radius-negative", lambda e: e.opt.load_state_dict(_sd(e, radius=-1.0)), ValueError,
     r"state_dict\['radius'\] must be > 0, got -1"),
    ("load-radius-nan", lambda e: e.opt.load_state_dict(_sd(e, radius=NAN)), ValueError,
     r"state_dict\['radius'\] must be a finite"),
    ("load-work-negative", lambda e: e.opt.load_state_dict(_sd(e, work=-3.0)), ValueError,
     r"state_dict\['work'\] must be >= 0"),
    ("load-iteration-float", lambda e: e.opt.load_state_dict(_sd(e, iteration=1.5)), TypeError,
     r"state_dict\['iteration'\] must be an integer"),
    ("load-loss-mismatch", lambda e: e.opt.load_state_dict(_sd(e, loss="cross_entropy")),
     ValueError, r"saved with loss 'cross_entropy' but this optimiser uses 'least_squares'"),
    ("load-alpha-nan", lambda e: e.opt.load_state_dict(_sd(e, alpha_w=NAN)), ValueError,
     r"state_dict\['alpha_w'\] must be a finite"),
    ("load-config-invalid", lambda e: e.opt.load_state_dict(
        _sd(e, config={**e.opt.config.to_dict(), "descent": {"max_products": 0}})),
     ValueError, r"max_products must be >= 1"),
    ("load-config-unknown", lambda e: e.opt.load_state_dict(_sd(e, config={"turbo": True})),
     ValueError, r"state_dict\['config'\] has unknown setting\(s\) turbo"),
    ("load-config-not-dict", lambda e: e.opt.load_state_dict(_sd(e, config=[1])), TypeError,
     r"state_dict\['config'\] must be a dict"),
    ("load-model-not-dict", lambda e: restore(e.model, e.opt, {
        **checkpoint_state(e.model, e.opt), "model": 42}), TypeError,
     r"state_dict\['model'\] must be a dict of tensors"),
    ("load-model-missing-key", lambda e: restore(e.model, e.opt, _ck_model(
        e, lambda m: m.pop("2.bias"))), ValueError,
     r"does not fit this model: missing keys \['2\.bias'\]"),
    ("load-model-unexpected-key", lambda e: restore(e.model, e.opt, _ck_model(
        e, lambda m: m.update(extra=torch.zeros(1)))), ValueError,
     r"unexpected keys \['extra'\]"),
    ("load-model-shape", lambda e: restore(e.model, e.opt, _ck_model(
        e, lambda m: m.update({"2.weight": torch.zeros(3, 4, dtype=F64)}))),
     ValueError, r"state_dict\['model'\]\['2\.weight'\] has shape \(3, 4\) but the model's is "
     r"\(2, 4\)"),
    ("load-model-nan", lambda e: restore(e.model, e.opt, _ck_model(
        e, lambda m: m["0.weight"].fill_(NAN))), ValueError,
     r"state_dict\['model'\]\['0\.weight'\] contains NaN/Inf"),
    ("load-model-not-tensor", lambda e: restore(e.model, e.opt, _ck_model(
        e, lambda m: m.update({"0.bias": [0.0] * 4}))), TypeError,
     r"state_dict\['model'\]\['0\.bias'\] must be a tensor"),
]


def _set_nan(model: nn.Sequential, i: int, what: str = "weight", value: float = NAN):
    with torch.no_grad():
        getattr(model[i], what).view(-1)[0] = value
    return model


def _add_dropout_in_train_mode(e: Env) -> None:
    e.model[1] = nn.Sequential(nn.Tanh(), nn.Dropout(0.5))  # a new module: training mode


class _SoftmaxAfterHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.out = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.out(torch.tanh(self.body(x))), -1)


def test_api_table_is_large_and_unique():
    ids = [c[0] for c in API_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 100, len(ids)


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_bad_input_and_changes_nothing(case):
    _, call, exc, pattern, *prep = case
    e = _env()
    if prep:
        prep[0](e)
    before = _snapshot(e)
    with pytest.raises(exc) as info:
        call(e)
    assert type(info.value) is exc or isinstance(info.value, exc)
    assert re.search(pattern, str(info.value)), f"{str(info.value)!r} !~ {pattern!r}"
    assert "\n" not in str(info.value).strip()
    _assert_unchanged(before, e)
    if not prep:  # the optimiser goes on as if nothing had happened
        rec = e.opt.step(e.x, e.y)
        assert rec.iteration == before["iteration"] + 1 and math.isfinite(rec.loss)


# ----------------------------------------------------------------- silent cases, now handled
def test_in_place_change_of_the_batch_is_a_new_batch():
    e = _env()
    work = e.opt.state.work
    e.opt.step(e.x, e.y)
    assert e.opt.state.work < work + 2 * 4 + 2 + 2  # same batch: no re-evaluation (≤ 4 H v)
    e.y.mul_(100)  # same tensor object, new content
    rec = e.opt.step(e.x, e.y)
    with torch.no_grad():
        true = 0.5 * (e.model(e.x) - e.y).square().sum() / len(e.x)
    assert rec.data_loss == pytest.approx(float(true), rel=1e-10)
    assert rec.data_loss > 10.0  # the targets 100x larger: not the stale batch


def test_state_dict_is_a_copy_and_load_restores_alpha_and_config():
    e = _env()
    ck = checkpoint_state(e.model, e.opt)
    sd = ck["optimizer"]
    saved = {k: v.clone() for k, v in ck["model"].items()}
    e.opt.step(e.x, e.y)
    for k, v in ck["model"].items():
        assert torch.equal(v, saved[k]), "checkpoint_state() must not follow later steps"
    opt2 = GNvpro(_model(seed=1))
    restore(opt2.model, opt2, ck)
    assert opt2.alpha_w == e.opt.alpha_w == 1e-6 and opt2.config.descent.max_products == 4
    assert opt2.config == e.opt.config
    for k, v in opt2.model.state_dict().items():
        assert torch.equal(v, saved[k])
    rec = opt2.step(e.x, e.y)
    assert rec.iteration == sd["iteration"] + 1


def test_eval_mode_batch_norm_and_dropout_train():
    x, y = _data()
    model = _seq(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.3), nn.Tanh(), nn.Linear(4, 2))
    model.eval()
    hist = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6).run(x, y, max_iter=3)
    assert hist.final.loss <= hist.records[0].loss + 1e-12


def test_config_numbers_are_normalised_and_defaults_of_later_fields_accepted():
    cfg = PreconditionedCG(max_products=np.int64(7), rtol=np.float32(0.25))
    assert type(cfg.max_products) is int and cfg.max_products == 7
    assert type(cfg.rtol) is float
    assert _LaterConfig().n_workers is None
    assert _LaterConfig(n_workers=3, mode="exact").n_workers == 3


# --------------------------------------------------------------------------------- CLI cases
def _mat(path: Path, Y: np.ndarray, C: np.ndarray) -> Path:
    return _savemat(path, Y=Y, C=C)


def _good_mat(tmp: Path, n: int = 800) -> Path:
    rng = np.random.default_rng(0)
    return _mat(tmp / "good.mat", rng.standard_normal((55, n)), rng.standard_normal((72, n)))


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _truncated(src: Path, dst: Path) -> Path:
    return _write(dst, src.read_bytes()[: src.stat().st_size // 2])


def _npz(path: Path, **arrays: Any) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _dcr_bad_hash(tmp: Path) -> Path:
    from gnvpro_experiments.problems import dcr

    cfg = dcr.DCRConfig()
    n = 4
    return _npz(tmp / "bad.npz", Y=np.zeros((n, 3)), D=np.zeros((n, cfg.n_measurements)),
                config_json=np.array(cfg.to_json()), n=np.array(n), seed=np.array(0),
                version=np.array(dcr.GENERATOR_VERSION), hash=np.array("0" * 64))


class _Evil:
    """Unpickling this would run code: it writes the file named by `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _evil_cifar(tmp: Path) -> Path:
    d = tmp / "cifar-10-batches-py"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": _Evil(tmp / "PWNED"), b"labels": [0]}, f, protocol=2)
    return d


def _run_dir(tmp: Path, summary: Any = None, history: str | None = None) -> Path:
    d = tmp / "rundir"
    (d / "gnvpro" / "seed-0").mkdir(parents=True)
    if summary is not None:
        _write(d / "summary.json", summary if isinstance(summary, str) else json.dumps(summary))
    if history is not None:
        _write(d / "gnvpro" / "seed-0" / "history.jsonl", history)
    return d


ROW = {"seed": 0, "train": 0.1, "val": 0.2, "test": 0.3, "work_units": 10.0, "seconds": 1.0,
       "inner_seconds": 0.1}
GOOD_SUMMARY = {"experiment": "cdr", "metric": "rel_err", "settings": {},
                "methods": {"gnvpro": [ROW]}}
GOOD_LINE = json.dumps({"loss": 1.0, "work_units": 2.0, "seconds": 0.1, "level": 1})


def _toml(tmp: Path, text: str) -> Path:
    return _write(tmp / "exp.toml", text)


def _file(tmp: Path) -> Path:
    return _write(tmp / "a-file", "x")


def _cdr(tmp: Path, data: Path, *more: str) -> list[str]:
    return ["run", "cdr", "--data", str(data), "--seeds", "0", "--methods", "gnvpro",
            "--out", str(tmp / "out"), "--no-progress", *more]


RO = pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                        reason="root ignores directory permissions")

# (id, argv(tmp), regex of the cause on stderr)
CLI_CASES: list[tuple] = [
    ("no-command", lambda t: [], r"required: COMMAND"),
    ("unknown-command", lambda t: ["fly"], r"invalid choice: 'fly'"),
    ("run-no-experiment", lambda t: ["run"], r"required: experiment"),
    ("run-unknown-option", lambda t: ["run", "cdr", "--fast"], r"unrecognized arguments: --fast"),
    ("unknown-experiment", lambda t: ["run", "nope"], r"unknown experiment 'nope'"),
    ("toml-missing", lambda t: ["run", str(t / "none.toml")], r"config file not found"),
    ("toml-invalid", lambda t: ["run", str(_toml(t, "name = [\n"))], r"invalid TOML"),
    ("toml-unknown-key", lambda t: ["run", str(_toml(t, 'name = "x"\nspeed = 3\n'))],
     r"unknown key\(s\) speed"),
    ("toml-missing-key", lambda t: ["run", str(_toml(t, 'name = "x"\n'))],
     r"missing required key 'problem'"),
    ("unknown-method", lambda t: ["run", "cdr", "--methods", "gnvpro,newton"],
     r"unknown method 'newton'"),
    ("empty-methods", lambda t: ["run", "cdr", "--methods", ","], r"at least one method"),
    ("seeds-garbage", lambda t: ["run", "cdr", "--seeds", "x-y"], r"--seeds: cannot read 'x-y'"),
    ("seeds-reversed", lambda t: ["run", "cdr", "--seeds", "5-2"], r"cannot read '5-2'"),
    ("seeds-negative", lambda t: ["run", "cdr", "--seeds", "-3"], r"seeds must be >= 0"),
    ("seeds-huge-range", lambda t: ["run", "cdr", "--seeds", "0-1000000000"],
     r"1000000001 seeds; at most 1000"),
    ("seeds-too-many", lambda t: ["run", "cdr", "--seeds", ",".join(map(str, range(1001)))],
     r"more than 1000 seeds"),
    ("seeds-ref-not-cdr", lambda t: ["run", "ellipse", "--seeds", "ref"],
     r"seed 'ref'.*only for the cdr"),
    ("budget-zero", lambda t: ["run", "ellipse", "--budget-scale", "0", "--out", str(t / "o")],
     r"--budget-scale must be a positive number"),
    ("budget-nan", lambda t: ["run", "ellipse", "--budget-scale", "nan", "--out", str(t / "o")],
     r"--budget-scale must be a positive number, got nan"),
    ("budget-not-number", lambda t: ["run", "ellipse", "--budget-scale", "abc"],
     r"argument --budget-scale: invalid float value: 'abc'"),
    ("levels-zero", lambda t: ["run", "cdr", "--levels", "0"], r"--levels must be >= 1"),
    ("levels-not-resnet", lambda t: ["run", "ellipse", "--levels", "2"],
     r"multilevel training needs a resnet"),
    ("epochs-zero", lambda t: ["run", "cifar10", "--epochs", "0"], r"--epochs must be >= 1"),
    ("checkpoint-every-negative", lambda t: ["run", "ellipse", "--checkpoint-every", "-1",
                                             "--out", str(t / "o")],
     r"--checkpoint-every must be a number of seconds >= 0, got -1"),
    ("set-malformed", lambda t: ["run", "ellipse", "--set", "gnvpro", "--out", str(t / "o")],
     r"--set 'gnvpro': expected METHOD\.KEY=VALUE"),
    ("set-unknown-key", lambda t: ["run", "ellipse", "--set", "gn.turbo=1", "--out",
                                   str(t / "o")], r"unknown key\(s\) turbo in \[methods\.gn\]"),
    ("subset-not-images", lambda t: ["run", "cdr", "--subset", "10"],
     r"no data option subset"),
    ("subset-zero", lambda t: ["run", "cifar10", "--subset", "0"], r"subset must be > 0"),
    ("device-unknown", lambda t: ["run", "ellipse", "--device", "tpu", "--out", str(t / "o")],
     r"--device must be cpu or cuda, got 'tpu'"),
    ("jvp-mode-unknown", lambda t: ["run", "cdr", "--jvp-mode", "fast"],
     r"argument --jvp-mode: invalid choice: 'fast'"),
    ("out-is-a-file", lambda t: ["run", "ellipse", "--out", str(_file(t)), "--no-progress"],
     r"--out .*a-file is a file, not a directory"),
    ("out-under-a-file", lambda t: ["run", "ellipse", "--out", str(_file(t) / "sub"),
                                    "--no-progress"], r"--out .*a-file/sub: cannot write there"),
    ("out-other-settings", lambda t: ["run", "ellipse", "--out", str(
        _run_dir(t, {**GOOD_SUMMARY, "settings": {"other": 1}})), "--no-progress"],
     r"holds results of a run with other settings"),
    ("out-truncated-summary", lambda t: ["run", "ellipse", "--out", str(
        _run_dir(t, json.dumps(GOOD_SUMMARY)[:40])), "--no-progress"],
     r"summary\.json is unreadable"),
    ("out-summary-no-methods", lambda t: ["run", "ellipse", "--out", str(
        _run_dir(t, {"experiment": "x"})), "--no-progress"],
     r"summary\.json is not a gnvpro summary"),
    ("cdr-data-missing", lambda t: _cdr(t, t / "none.mat"), r"none\.mat"),
    ("cdr-data-empty", lambda t: _cdr(t, _write(t / "empty.mat", b"")),
     r"data file .*empty\.mat of cdr is unreadable"),
    ("cdr-data-truncated", lambda t: _cdr(t, _truncated(_good_mat(t), t / "half.mat")),
     r"half\.mat of cdr is unreadable"),
    ("cdr-data-garbage", lambda t: _cdr(t, _write(t / "junk.mat", os.urandom(4000))),
     r"junk\.mat of cdr is unreadable"),
    ("cdr-data-wrong-variables", lambda t: _cdr(t, _savemat(t / "wv.mat", A=np.zeros((55, 3)))),
     r"expected variables 'Y' and 'C'"),
    ("cdr-data-wrong-shapes", lambda t: _cdr(t, _mat(t / "ws.mat", np.zeros((54, 9)),
                                                     np.zeros((72, 9)))),
     r"expected Y \(55, n\) and C \(72, n\)"),
    ("cdr-data-too-small", lambda t: _cdr(t, _good_mat(t, n=50)),
     r"CDR data has 50 samples, the split needs 800"),
    ("cdr-data-all-nan", lambda t: _cdr(t, _mat(t / "nan.mat", np.full((55, 800), np.nan),
                                                np.full((72, 800), np.nan))),
     r"hold \d+ NaN/Inf value\(s\) in x_train \(100% of it\)"),
    ("dcr-data-empty", lambda t: ["run", "dcr", "--data", str(_write(t / "e.npz", b"")),
                                  "--out", str(t / "o"), "--no-progress"],
     r"DCR data file .*e\.npz' is corrupt"),
    ("dcr-data-truncated", lambda t: ["run", "dcr", "--data", str(_truncated(
        _dcr_bad_hash(t), t / "half.npz")), "--out", str(t / "o"), "--no-progress"],
     r"half\.npz' is corrupt"),
    ("dcr-data-bad-hash", lambda t: ["run", "dcr", "--data", str(_dcr_bad_hash(t)),
                                     "--out", str(t / "o"), "--no-progress"],
     r"fails its content-hash check"),
    ("dcr-data-not-dcr", lambda t: ["run", "dcr", "--data", str(_npz(t / "x.npz", a=np.ones(3))),
                                    "--out", str(t / "o"), "--no-progress"],
     r"is incomplete \(missing"),
    ("indian-pines-empty", lambda t: ["run", "indian-pines", "--data", str(_write(
        t / "ip.npz", b"")), "--out", str(t / "o"), "--no-progress"],
     r"ip\.npz: not a readable Indian Pines \.npz"),
    ("indian-pines-wrong-keys", lambda t: ["run", "indian-pines", "--data", str(_npz(
        t / "ip.npz", cube=np.zeros((2, 2, 3)))), "--out", str(t / "o"), "--no-progress"],
     r"ip\.npz: .*missing \['labels'\]"),
    ("cifar-npz-garbage", lambda t: ["run", "cifar10", "--data", str(_write(
        t / "c.npz", os.urandom(100))), "--out", str(t / "o"), "--no-progress"],
     r"c\.npz: not a readable CIFAR-10 \.npz"),
    ("cifar-malicious-pickle", lambda t: ["run", "cifar10", "--data", str(_evil_cifar(t)),
                                          "--out", str(t / "o"), "--no-progress"],
     r"refusing to load (__builtin__|builtins)\.exec: a CIFAR-10 batch holds only NumPy arrays"),
    ("cifar-batches-missing", lambda t: ["run", "cifar10", "--data", str(_mkdir(t / "cb")),
                                         "--out", str(t / "o"), "--no-progress"],
     r"CIFAR-10 training batch not found"),
    ("fashion-missing", lambda t: ["run", "fashion-mnist", "--data", str(_mkdir(t / "fm")),
                                   "--out", str(t / "o"), "--no-progress"],
     r"Fashion-MNIST file 'train-images-idx3-ubyte\[\.gz\]' not found"),
    ("fashion-corrupt-idx", lambda t: ["run", "fashion-mnist", "--data", str(_bad_idx(t)),
                                       "--out", str(t / "o"), "--no-progress"], r"idx"),
    ("report-missing-dir", lambda t: ["report", str(t / "nothing")], r"no summary\.json in"),
    ("report-on-a-file", lambda t: ["report", str(_file(t))], r"no summary\.json in"),
    ("report-truncated-summary", lambda t: ["report", str(_run_dir(
        t, json.dumps(GOOD_SUMMARY)[:30]))], r"summary\.json: unreadable summary"),
    ("report-summary-no-methods", lambda t: ["report", str(_run_dir(t, {"experiment": "x"}))],
     r"not a gnvpro summary: it has no \"methods\" table"),
    ("report-summary-list", lambda t: ["report", str(_run_dir(t, [1, 2]))],
     r"not a gnvpro summary"),
    ("report-summary-bad-rows", lambda t: ["report", str(_run_dir(
        t, {**GOOD_SUMMARY, "methods": {"gnvpro": [{"seed": 0}]}}))],
     r"the rows of method 'gnvpro' are not runs"),
    ("report-corrupt-history-line", lambda t: ["report", str(_run_dir(
        t, GOOD_SUMMARY, GOOD_LINE + "\n" + GOOD_LINE[:20] + "\n"))],
     r"history\.jsonl, line 2: corrupt record"),
    ("report-history-not-records", lambda t: ["report", str(_run_dir(t, GOOD_SUMMARY, "[1]\n"))],
     r"history\.jsonl, line 1: not a training record"),
    ("report-bad-reference", lambda t: ["report", str(_ref_dir(t))],
     r"reference_history\.json is not a reference history"),
    ("data-n-zero", lambda t: ["data", "dcr", "--n", "0", "--out", str(t / "d.npz")],
     r"--n must be >= 1, got 0"),
    ("data-n-not-int", lambda t: ["data", "dcr", "--n", "ten", "--out", str(t / "d.npz")],
     r"argument --n: invalid int value: 'ten'"),
    ("data-seed-negative", lambda t: ["data", "dcr", "--seed", "-1", "--out", str(t / "d.npz")],
     r"--seed must be >= 0"),
    ("data-out-is-dir", lambda t: ["data", "dcr", "--n", "2", "--out", str(_mkdir(t / "dd"))],
     r"is a directory"),
    ("data-no-out", lambda t: ["data", "dcr", "--n", "2"], r"required: --out"),
    ("data-no-dataset", lambda t: ["data"], r"required: DATASET"),
    ("demo-out-is-a-file", lambda t: ["demo", "--out", str(_file(t))], r"a-file"),
]


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def _savemat(path: Path, **arrays: np.ndarray) -> Path:
    import scipy.io

    scipy.io.savemat(str(path), arrays)
    return path


def _bad_idx(t: Path) -> Path:
    d = _mkdir(t / "fmc")
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        _write(d / stem, b"\x00\x00\x08\x03garbage")
    return d


def _ref_dir(t: Path) -> Path:
    d = _run_dir(t, GOOD_SUMMARY, GOOD_LINE + "\n")
    _write(d / "reference_history.json", json.dumps({"finals": 1}))
    return d


def test_cli_table_is_large_and_unique():
    ids = [c[0] for c in CLI_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40, len(ids)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_user_error_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    _, argv, pattern = case
    monkeypatch.chdir(tmp_path)  # default --out directories land here
    monkeypatch.setenv("GNVPRO_CACHE", str(tmp_path / "cache"))
    args = argv(tmp_path)
    capsys.readouterr()
    try:
        rc = cli.main(args)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out = capsys.readouterr()
    err = out.err.strip()
    assert rc == 2, (rc, err, out.out[-500:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "error:" in err
    assert re.search(pattern, err), f"{err!r} !~ {pattern!r}"
    assert not (tmp_path / "PWNED").exists(), "code from a data file ran"
    for d in (tmp_path / "out", tmp_path / "o"):  # only finished runs reach summary.json
        assert not (d / "summary.json").exists()


@RO
def test_cli_read_only_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert cli.main(["run", "ellipse", "--out", str(ro), "--no-progress"]) == 2
    finally:
        ro.chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write there" in err


def test_malicious_pickle_is_refused_by_the_loader(tmp_path):
    from gnvpro_experiments.problems.images import UnsafePickleError, load_cifar10_batches

    d = _evil_cifar(tmp_path)
    with pytest.raises(UnsafePickleError, match=r"refusing to load (__builtin__|builtins)\.exec"):
        load_cifar10_batches(d)
    assert not (tmp_path / "PWNED").exists()
    # the same file through plain pickle would have run the code: the test can fail
    with open(d / "test_batch", "rb") as f:
        pickle.load(f)
    assert (tmp_path / "PWNED").read_text() == "pwned"


# ------------------------------------------------------------------ crash safety: kill -9, resume
TINY_CDR = (Path(__file__).parent / "data" / "tiny_cdr.toml").read_text()


def _numbers(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    return {m: sorted((json.dumps(r["seed"]), r["train"], r["val"], r["test"], r["work_units"])
                      for r in rows) for m, rows in s["methods"].items()}


def test_kill_9_then_resume_gives_the_uninterrupted_numbers(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    toml = _write(tmp_path / "tiny.toml", TINY_CDR)
    data = _good_mat(tmp_path)
    args = ["run", str(toml), "--data", str(data), "--seeds", "0-1", "--methods",
            "gnvpro,lbfgs-vpro", "--no-progress"]
    ref = tmp_path / "uninterrupted"
    assert cli.main([*args, "--out", str(ref)]) == 0

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gnvpro_experiments.cli", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not list(out.glob("*/seed-*/checkpoint.pt")) and proc.poll() is None:
        assert time.monotonic() - t0 < 120, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent for p in out.glob("*/seed-*/final.json")}
    assert len(finished) < 4 and list(out.glob("*/seed-*/checkpoint.pt")), "nothing to resume"
    finals = {p: (p / "final.json").read_bytes() for p in finished}
    # a plain rerun never rewrites a finished run; --resume continues the killed one
    assert cli.main([*args, "--out", str(out), "--resume"]) == 0
    for d in finished:  # finished runs are kept byte for byte
        assert (d / "final.json").read_bytes() == finals[d]
    assert not list(out.glob("*/seed-*/checkpoint.pt"))
    assert _numbers(out) == _numbers(ref)
    for m in ("gnvpro", "lbfgs-vpro"):
        for s in ("seed-0", "seed-1"):
            a = [json.loads(x) for x in (out / m / s / "history.jsonl").read_text().splitlines()]
            b = [json.loads(x) for x in (ref / m / s / "history.jsonl").read_text().splitlines()]
            assert [r["loss"] for r in a] == [r["loss"] for r in b]
            assert [r["work_units"] for r in a] == [r["work_units"] for r in b]


def test_resume_refuses_a_checkpoint_it_cannot_read(tmp_path, capsys):
    toml = _write(tmp_path / "tiny.toml", TINY_CDR)
    data = _good_mat(tmp_path)
    out = tmp_path / "o"
    ck = out / "gnvpro" / "seed-0" / "checkpoint.pt"
    ck.parent.mkdir(parents=True)
    _write(ck, b"not a checkpoint")
    rc = cli.main(["run", str(toml), "--data", str(data), "--seeds", "0", "--methods", "gnvpro",
                   "--no-progress", "--out", str(out), "--resume"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "checkpoint.pt cannot be resumed" in err
    assert not (out / "summary.json").exists()


def test_a_compiled_model_is_refused_with_what_to_pass():
    """torch.compile's wrapper hides the head: the message says to pass the original module."""
    from gnvpro import GNvpro

    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    with pytest.raises(TypeError, match="_orig_mod"):
        GNvpro(torch.compile(m))
