"""Solvers composed of a descent and a search (gnvpro.descent, gnvpro.search, gnvpro.solver):
every pair that fits trains, L-BFGS-VarPro is GNvpro with the two-loop descent, the named
constructions, settings round trips, and the flat settings of earlier versions."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import gnvpro
from gnvpro import (
    GNvpro,
    GNvproConfig,
    Hybrid,
    JointGaussNewton,
    JointGNConfig,
    LanczosSubspace,
    LBFGSTwoLoop,
    LBFGSVarPro,
    LBFGSVarProConfig,
    PreconditionedCG,
    RadiusRule,
    Steihaug,
    StrongWolfe,
    TrustRegion,
)
from gnvpro.solver import (
    SolverConfig,
    Termination,
    check_termination,
    initial_state,
    outer_step,
    paper_trust_region,
    truncated_gauss_newton,
    upgrade_settings,
)
from gnvpro.validate import config_from_dict

F64 = torch.float64
PAIRS = [(LanczosSubspace(max_products=6), TrustRegion()), (Steihaug(max_products=6),
                                                            TrustRegion()),
         (PreconditionedCG(max_products=6), StrongWolfe()), (LBFGSTwoLoop(), StrongWolfe()),
         (Hybrid(max_products=6, probe_after=1), StrongWolfe())]


def _problem(loss: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 3, generator=g, dtype=F64)
    if loss == "least_squares":
        y = torch.stack([torch.sin(2 * x[:, 0]) * x[:, 1], x[:, 2] ** 2], 1)
        out = 2
    else:
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
        out = 3
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, out)).double()
    return model, x, y


@pytest.mark.parametrize("loss", ["least_squares", "cross_entropy"])
@pytest.mark.parametrize("descent, search", PAIRS, ids=[d.kind for d, _ in PAIRS])
def test_every_fitting_pair_trains_and_counts_its_work(loss, descent, search):
    model, x, y = _problem(loss)
    opt = GNvpro(model, loss, alpha_w=1e-4, alpha_theta=1e-6,
                 config=GNvproConfig(descent=descent, search=search))
    hist = opt.run(x, y, max_iter=8)
    values = [r.loss for r in hist.records]
    assert values[-1] < 0.9 * values[0]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:], strict=False))
    for prev, r in zip(hist.records, hist.records[1:], strict=False):
        products = 2 * r.krylov_iters
        cap = getattr(descent, "max_products", 0)
        assert r.krylov_iters <= 2 * cap  # Steihaug's first radius: one unconstrained run
        if isinstance(search, StrongWolfe):  # products, values, gradients where Armijo holds
            assert (products + r.line_search_evals <= r.work_units - prev.work_units
                    <= products + 2 * r.line_search_evals)


def test_lbfgs_varpro_is_gnvpro_with_the_two_loop_descent():
    runs = []
    for make in (lambda m: LBFGSVarPro(m, alpha_w=1e-6, alpha_theta=1e-6,
                                       config=LBFGSVarProConfig(descent=LBFGSTwoLoop(memory=4))),
                 lambda m: GNvpro(m, alpha_w=1e-6, alpha_theta=1e-6,
                                  config=GNvproConfig(descent=LBFGSTwoLoop(memory=4)))):
        model, x, y = _problem("least_squares")
        hist = make(model).run(x, y, max_iter=12)
        runs.append(([r.loss for r in hist.records], [r.work_units for r in hist.records],
                     torch.cat([p.detach().reshape(-1) for p in model.parameters()])))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][2], runs[1][2])


def test_the_named_constructions_are_written_once():
    tr, tn = paper_trust_region(), truncated_gauss_newton()
    assert tr == {"descent": LanczosSubspace(max_products=20, rtol=1e-2),
                  "search": TrustRegion(rule=RadiusRule(), min_radius=1e-14, extrapolate=False)}
    assert tn == {"descent": PreconditionedCG(max_products=10, rtol=1e-2, memory=10),
                  "search": StrongWolfe(c1=1e-4, c2=0.9, max_evals=25)}
    default = GNvproConfig()
    assert (default.descent, default.search, default.inner_forcing) == (
        Hybrid(), tn["search"], 1e-2)
    t = GNvproConfig.trust_region()
    assert (t.descent, t.search, t.inner_forcing) == (tr["descent"], tr["search"], 0.0)
    t = GNvproConfig.truncated_gauss_newton(jacobian="kaufman")
    assert (t.descent, t.search, t.inner_forcing, t.jacobian) == (
        tn["descent"], tn["search"], 0.0, "kaufman")
    assert (JointGNConfig().descent, JointGNConfig().search) == (tr["descent"], tr["search"])
    assert (SolverConfig().descent, SolverConfig().search) == (tr["descent"], tr["search"])


@pytest.mark.parametrize("cfg", [
    GNvproConfig(), GNvproConfig.trust_region(search=TrustRegion(rule=RadiusRule(expand=2.0))),
    GNvproConfig(descent=Steihaug(rtol=0.1), search=TrustRegion(extrapolate=True)),
    LBFGSVarProConfig(descent=LBFGSTwoLoop(3), search=StrongWolfe(c2=0.5)),
    JointGNConfig(descent=PreconditionedCG(memory=0), search=StrongWolfe(), coupled=False),
    GNvproConfig(descent=Hybrid(probe_share=2.0), inner_forcing=1e-2),
], ids=["tn", "tr", "steihaug", "lbfgs", "joint-tn", "hybrid"])
def test_settings_round_trip_through_plain_dicts(cfg):
    d = cfg.to_dict()
    assert d["descent"]["kind"] == cfg.descent.kind and d["search"]["kind"] == cfg.search.kind
    assert config_from_dict(type(cfg), d) == cfg


# the flat keys of earlier versions: what a saved config.json or state dict holds
OLD_TN = {"max_krylov": 10, "krylov_rtol": 0.01, "subproblem": "tn",
          "radius_rule": {"eta_reject": 0.0001, "eta_shrink": 0.1, "eta_expand": 0.75,
                          "shrink": 0.5, "expand": 1.5, "max_radius_per_grad": 10000.0},
          "grad_rtol": 1e-10, "grad_atol": 0.0, "min_radius": 1e-14, "tn_memory": 10,
          "max_line_search": 25, "extrapolate": False, "inner_rtol": 1e-10,
          "inner_atol": 1e-10, "inner_max_iter": 100, "jacobian": "full", "gn_alpha_w": True,
          "jvp_mode": "auto", "threads": None}


@pytest.mark.parametrize("cls, old, new", [
    (GNvproConfig, OLD_TN, GNvproConfig(**truncated_gauss_newton(), inner_forcing=0.0)),
    (GNvproConfig, {**OLD_TN, "subproblem": "lanczos", "max_krylov": 20, "tn_memory": 3,
                    "radius_rule": {"eta_expand": 0.8}, "min_radius": 1e-9},
     GNvproConfig.trust_region(search=TrustRegion(rule=RadiusRule(eta_expand=0.8),
                                                  min_radius=1e-9))),
    (GNvproConfig, {"subproblem": "steihaug", "max_krylov": 7, "extrapolate": True},
     GNvproConfig(descent=Steihaug(max_products=7), search=TrustRegion(extrapolate=True),
                  inner_forcing=0.0)),
    (GNvproConfig, {"max_krylov": 5, "tn_memory": 0, "max_line_search": 9},  # the default: tn
     GNvproConfig(descent=PreconditionedCG(max_products=5, memory=0),
                  search=StrongWolfe(max_evals=9), inner_forcing=0.0)),
    (LBFGSVarProConfig, {"memory": 5, "max_line_search": 30, "grad_rtol": 1e-9},
     LBFGSVarProConfig(descent=LBFGSTwoLoop(5), search=StrongWolfe(max_evals=30),
                       grad_rtol=1e-9)),
    (JointGNConfig, {"max_krylov": 7, "krylov_rtol": 1e-3, "coupled": False},
     JointGNConfig(descent=LanczosSubspace(7, 1e-3), coupled=False)),
], ids=["tn-saved", "lanczos", "steihaug", "tn-default", "lbfgs", "joint"])
def test_flat_settings_of_earlier_versions_load(cls, old, new):
    assert config_from_dict(cls, old) == new
    assert upgrade_settings(new.to_dict(), cls) == new.to_dict()  # today's form: unchanged


def test_settings_saved_before_inner_forcing_solve_w_exactly():
    # a full dict of a version with descent and search but no inner_forcing: W* was exact
    saved = {k: v for k, v in GNvproConfig.truncated_gauss_newton().to_dict().items()
             if k != "inner_forcing"}
    assert config_from_dict(GNvproConfig, saved).inner_forcing == 0.0
    # a partial dict written by hand: today's default
    assert config_from_dict(GNvproConfig, {"jacobian": "kaufman"}).inner_forcing == 1e-2


def test_a_hybrid_saved_before_cg_price_priced_its_units_alike():
    saved = GNvproConfig().to_dict()
    del saved["descent"]["cg_price"]
    assert config_from_dict(GNvproConfig, saved).descent == Hybrid(cg_price=1.0)
    # a partial dict written by hand: today's default
    partial = {"descent": {"kind": "hybrid", "max_products": 4}}
    assert config_from_dict(GNvproConfig, partial).descent == Hybrid(max_products=4)


def test_an_old_state_dict_loads_and_continues():
    model, x, y = _problem("least_squares")
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6,
                 config=GNvproConfig.trust_region(descent=LanczosSubspace(max_products=5)))
    opt.step(x, y)
    sd = opt.state_dict()
    sd["config"] = {**{k: v for k, v in sd["config"].items() if k not in ("descent", "search")},
                    "subproblem": "lanczos", "max_krylov": 5, "krylov_rtol": 0.01}
    fresh = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6)
    fresh.load_state_dict(sd)
    assert fresh.config == opt.config
    assert fresh.step(x, y).iteration == 2


def test_a_bad_flat_subproblem_is_named():
    with pytest.raises(ValueError, match=r"subproblem must be one of 'lanczos', 'steihaug', "
                                         r"'tn' \(now descent=..., search=...\), got 'newton'"):
        config_from_dict(GNvproConfig, {"subproblem": "newton"})


class _Wall:
    """f(θ) = ½‖θ‖² at θ0, +inf everywhere else: no line search finds a decrease."""

    class Pt:
        def __init__(self, theta, value):
            self.theta, self.value, self.loss, self.inner = theta, value, value, None

    def __init__(self, theta0):
        self.theta0 = theta0

    def evaluate(self, theta, prev=None, *, outer_grad_norm=None):
        return self.Pt(theta, 0.5 * float(theta @ theta) if torch.equal(theta, self.theta0)
                       else math.inf)

    def gradient(self, pt):
        return pt.theta.clone()

    def gn_operator(self, pt):
        return lambda v: v


@pytest.mark.parametrize("descent", [PreconditionedCG(), LBFGSTwoLoop(), Hybrid()],
                         ids=["cg", "lbfgs", "hybrid"])
def test_a_failed_line_search_drops_the_pairs_then_stops(descent):
    theta0 = torch.ones(3, dtype=F64)
    problem, cfg = _Wall(theta0), SolverConfig(descent=descent, search=StrongWolfe(max_evals=4))
    state = replace(initial_state(problem, theta0), pairs=((theta0, theta0, 1 / 3.0),))
    state, info = outer_step(problem, state, cfg)
    assert not info.accepted and state.pairs == () and not state.stalled
    assert torch.equal(state.pt.theta, theta0) and info.line_search_evals == 4
    assert check_termination(state, cfg, None, None) is Termination.RUNNING
    state, info = outer_step(problem, state, cfg)
    assert state.stalled and check_termination(state, cfg, None, None) is Termination.LINE_SEARCH


def test_joint_gauss_newton_takes_a_line_search_too():
    model, x, y = _problem("cross_entropy")
    opt = JointGaussNewton(model, "cross_entropy", alpha_w=1e-3, alpha_theta=1e-6,
                           config=JointGNConfig(**truncated_gauss_newton()))
    hist = gnvpro.fit(opt, [(x, y)], max_iter=6, record_start=True)
    assert hist.final.loss < hist.records[0].loss and hist.final.line_search_evals >= 1


def test_repr_names_descent_and_search():
    model, _, _ = _problem("least_squares")
    r = repr(GNvpro(model, config=GNvproConfig(descent=PreconditionedCG(max_products=4))))
    assert "descent=PreconditionedCG(max_products=4, rtol=0.01, memory=10)" in r
    assert "search=StrongWolfe(" in r
    assert gnvpro.PreconditionedCG.kind == "cg"
