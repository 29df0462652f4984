"""GNvpro against the optimisers users reach for, at equal CPU-second budgets (issue 22, item 1).

One process, one torch intra-op thread (torch.set_num_threads(1); the gnvpro methods get
threads=1 too), float64. Every method is warmed up once per problem on a tiny budget first.
For each problem and seed all methods start from the same network and initial weights and
minimise the same objective

    Φ(θ, W) = data loss + (α_W/2)‖W‖² + (α_θ/2)‖θ‖²

(data loss 1/(2n)Σ‖s−c‖² or the mean cross-entropy; W = the nn.Linear head's weight and bias,
θ = every other parameter; the same α for every method), evaluated after each run by one
function (``objective``) on the training data, with the test metric (relative error
‖S−C‖_F/‖C‖_F or accuracy) from the same final weights.

Budgets: CPU seconds of this process (time.process_time; ``--clock wall`` for
time.perf_counter); both clocks are recorded and reported. A method's parameters are copied at
the end of every completed iteration (the copying is not counted); the result at budget b is the
last iterate completed by b: an iteration that ends after b is undone. Each (method, seed) is run
once, to the largest budget; the result at a smaller budget b is the last iterate completed by b
in that run, which is the iterate a separate run with budget b would return (no method sees its
budget). Stopping tests are off (tolerances 0 or 1e-15): every method runs until its budget
(or until it stops by itself). A run is stopped as soon as a forward pass starts after the
largest budget (a forward pre-hook); a LAPACK call in progress (scipy's dense SVD/QR) is not
interrupted.

Methods: gnvpro (GNvpro's default, GNvproConfig(): Hybrid(), the L-BFGS direction or
truncated GN, whichever lowered Φ more per work unit lately, with inexact inner solves,
inner_forcing=1e-2), gnvpro-tn (GNvproConfig.truncated_gauss_newton(): truncated Gauss-Newton
with exact inner solves, the default before issue 22), gnvpro-tr
(GNvproConfig.trust_region()), gnvpro-lbfgs (GNvproConfig(descent=LBFGSTwoLoop()): the L-BFGS
direction, inner_forcing=1e-2), lbfgs-vpro
(LBFGSVarPro), torch-lbfgs (torch.optim.LBFGS,
line_search_fn="strong_wolfe", one iteration per step(), full batch), adam (full batch, lr grid
1e-3, 3e-3, 1e-2, 3e-2; the table shows the lr with the lowest mean Φ per cell, chosen after
the fact), scipy-trf / scipy-lm (scipy.optimize.least_squares with the dense Jacobian of the
residual [ (S−C)/√n ; √α_W W ; √α_θ θ ] from torch.func; skipped with a note above the memory
cap ``--jac-mb``), scipy-trf-lsmr (trf, tr_solver="lsmr", the Jacobian as a matrix-free
LinearOperator of torch.func jvp/vjp), newton-cg / trust-krylov (pytorch-minimize, ``torchmin``;
left out with a note if it is not installed). scipy methods run on least-squares problems only.

Problems (inputs standardised with the training statistics, a fixed train/test split per seed,
model in→32→32→out tanh MLP with an nn.Linear head unless stated):
wine (178×13, 3 classes), breast-cancer (569×30, 2 classes), synth20 (2000×10, 20 classes),
diabetes (442×10 → 1, target standardised), smooth10 (2000×10 → 1 smooth function),
multi40 (1500×8 → 40 outputs), cdr (the paper's CDR_Data.mat, 400 train / 200 test, the paper's
antisymmetric ResNet width 8, 2 nodes; skipped with a note if the file is missing).

Target per problem: 1.05 × the lowest mean Φ any method reached at the largest budget; the time
to target is the first recorded iterate with Φ ≤ target (median over the seeds that reach it).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers.py --out out/peers
        [--budgets 0.5,2,8] [--seeds 3] [--clock cpu|wall] [--problems wine,cdr,...]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers.py --quick --out out/peers-quick

--quick: one seed, budgets 0.2,0.5 s, problems wine and diabetes. Writes OUT/peers.md and
OUT/<problem>.png (Φ vs seconds). Needs scikit-learn and pytorch-minimize (pip install -e
.[bench]).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

import gnvpro
from gnvpro_experiments.models import mlp

try:
    import torchmin
except ImportError:  # pragma: no cover - printed as a note
    torchmin = None

GNVPRO_METHODS = ("gnvpro", "gnvpro-tn", "gnvpro-tr", "gnvpro-lbfgs", "lbfgs-vpro")
ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2)


# ----------------------------------------------------------------------------- problems
@dataclass
class Problem:
    """One training problem at one seed (split and initial weights fixed by the seed)."""

    name: str
    kind: str  # "least_squares" or "cross_entropy"
    x: Tensor
    y: Tensor
    xt: Tensor
    yt: Tensor
    alpha_w: float
    alpha_theta: float
    model: nn.Sequential  # initial weights; copied for every method


def _split(x: np.ndarray, y: np.ndarray, n_train: int, seed: int, standardise_y: bool,
           kind: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    perm = np.random.default_rng(seed).permutation(len(x))
    tr, te = perm[:n_train], perm[n_train:]
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-12
    xs = torch.tensor((x - mu) / sd, dtype=torch.float64)
    if kind == "cross_entropy":
        yy = torch.tensor(y, dtype=torch.int64)
    else:
        y = y.reshape(len(y), -1).astype(np.float64)
        if standardise_y:
            y = (y - y[tr].mean(0)) / y[tr].std(0)
        yy = torch.tensor(y, dtype=torch.float64)
    return xs[tr], yy[tr], xs[te], yy[te]


def _synthetic(name: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    if name == "synth20":
        x = rng.standard_normal((2000, 10))
        a, b = rng.standard_normal((10, 16)), rng.standard_normal((16, 20))
        return x, np.argmax(np.tanh(x @ a / 2) @ b, axis=1)
    if name == "smooth10":
        x = rng.uniform(-1, 1, (2000, 10))
        a, b = rng.standard_normal(10), rng.standard_normal(10)
        return x, np.sin(x @ a) + 0.5 * x[:, 0] * np.cos(x @ b) + 0.3 * x[:, 1] ** 2
    x = rng.uniform(-1, 1, (1500, 8))  # multi40
    a, ph = rng.standard_normal((8, 40)), rng.uniform(0, 2 * np.pi, 40)
    return x, np.sin(x @ a + ph)


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

    d = {"wine": load_wine, "breast-cancer": load_breast_cancer,
         "diabetes": load_diabetes}[name]()
    return d.data.astype(np.float64), d.target


# name: (source, kind, train fraction or count, α, standardise y)
SPECS = {
    "wine": (_sklearn, "cross_entropy", 0.7, 1e-4, False),
    "breast-cancer": (_sklearn, "cross_entropy", 0.7, 1e-4, False),
    "synth20": (_synthetic, "cross_entropy", 1500, 1e-4, False),
    "diabetes": (_sklearn, "least_squares", 0.7, 1e-6, True),
    "smooth10": (_synthetic, "least_squares", 1500, 1e-6, False),
    "multi40": (_synthetic, "least_squares", 1000, 1e-6, False),
}


def make_problem(name: str, seed: int) -> Problem:
    """Problem ``name`` at ``seed`` (its split and initial weights)."""
    if name == "cdr":
        return _cdr(seed)
    source, kind, frac, alpha, std_y = SPECS[name]
    x, y = source(name)
    n_train = int(frac * len(x)) if frac < 1 else int(frac)
    x, y, xt, yt = _split(x, y, n_train, seed, std_y, kind)
    n_out = int(y.max()) + 1 if kind == "cross_entropy" else y.shape[1]
    model = mlp(x.shape[1], [32, 32], n_out, generator=torch.Generator().manual_seed(seed))
    return Problem(name, kind, x, y, xt, yt, alpha, alpha, model)


def _cdr(seed: int) -> Problem:
    """The paper's CDR data (read-only reuse of the application's loader) and network."""
    from gnvpro_experiments.models.resnet import paper_network
    from gnvpro_experiments.problems.cdr import cdr_split, load_cdr_mat

    Y, C = load_cdr_mat()
    perm = torch.randperm(len(Y), generator=torch.Generator().manual_seed(seed)).numpy()
    s = cdr_split(Y, C, perm[:400], perm[400:600], perm[600:800])
    model = paper_network(55, 72, 8, n_nodes=2, generator=torch.Generator().manual_seed(seed))
    return Problem("cdr", "least_squares", s.x_train, s.y_train, s.x_test, s.y_test,
                   1e-10, 1e-10, model)


# ----------------------------------------------------------------------------- objective
def head_name(model: nn.Sequential) -> str:
    return str(len(model) - 1)


def objective_from(model: nn.Module, params: dict[str, Tensor], p: Problem) -> Tensor:
    """Φ at the named parameters ``params`` (differentiable): the one shared objective."""
    s = functional_call(model, params, (p.x,))
    if p.kind == "least_squares":
        data = 0.5 / len(p.x) * (s - p.y).square().sum()
    else:
        data = F.cross_entropy(s, p.y)
    head = head_name(model) + "."
    w2 = sum(v.square().sum() for k, v in params.items() if k.startswith(head))
    t2 = sum(v.square().sum() for k, v in params.items() if not k.startswith(head))
    return data + 0.5 * p.alpha_w * w2 + 0.5 * p.alpha_theta * t2


def objective(model: nn.Module, p: Problem) -> Tensor:
    return objective_from(model, dict(model.named_parameters()), p)


def test_metric(model: nn.Module, p: Problem) -> float:
    """Relative test error (least squares) or test accuracy (cross-entropy)."""
    with torch.no_grad():
        s = model(p.xt)
    if p.kind == "least_squares":
        return float(torch.linalg.norm(s - p.yt) / torch.linalg.norm(p.yt))
    return float((s.argmax(1) == p.yt).double().mean())


class Flat:
    """The model's parameters as one flat float64 vector and back."""

    def __init__(self, model: nn.Module) -> None:
        self.names = [k for k, _ in model.named_parameters()]
        self.shapes = [v.shape for _, v in model.named_parameters()]
        self.sizes = [v.numel() for _, v in model.named_parameters()]

    def get(self, model: nn.Module) -> Tensor:
        return torch.cat([v.detach().reshape(-1) for v in model.parameters()]).clone()

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        parts = torch.split(flat, self.sizes)
        return {n: t.reshape(s) for n, t, s in zip(self.names, parts, self.shapes, strict=True)}

    def load(self, model: nn.Module, flat: Tensor) -> None:
        with torch.no_grad():
            for v, t in zip(model.parameters(), torch.split(flat, self.sizes), strict=True):
                v.copy_(t.reshape(v.shape))


# ----------------------------------------------------------------------------- budget
class OutOfTime(Exception):
    """The largest budget has passed."""


@dataclass
class Iterate:
    cpu: float
    wall: float
    it: int
    flat: Tensor


@dataclass
class Recorder:
    """Clocks, the last iterate completed within each budget, and a thinned trace."""

    budgets: list[float]
    clock: str = "cpu"
    last: Iterate | None = None
    at: dict[float, Iterate] = field(default_factory=dict)
    trace: list[Iterate] = field(default_factory=list)

    def start(self, flat0: Tensor) -> None:
        self.c0, self.w0, self.paused_c, self.paused_w = time.process_time(), \
            time.perf_counter(), 0.0, 0.0
        self.last = Iterate(0.0, 0.0, 0, flat0.clone())
        self.trace = [self.last]

    def times(self) -> tuple[float, float]:
        return (time.process_time() - self.c0 - self.paused_c,
                time.perf_counter() - self.w0 - self.paused_w)

    def now(self) -> float:
        c, w = self.times()
        return c if self.clock == "cpu" else w

    def check(self, *_: object) -> None:
        """Forward pre-hook: stop once the largest budget has passed."""
        if self.now() > self.budgets[-1]:
            raise OutOfTime

    def done(self, flat: Tensor) -> None:
        """An iteration completed with parameters ``flat`` (undone if past the budget)."""
        c0, w0 = time.process_time(), time.perf_counter()
        cpu, wall = self.times()
        t = cpu if self.clock == "cpu" else wall
        for b in self.budgets:
            if b not in self.at and t > b:
                self.at[b] = self.last
        if t > self.budgets[-1]:
            raise OutOfTime
        self.last = Iterate(cpu, wall, self.last.it + 1, flat.detach().clone().reshape(-1))
        prev = self.trace[-1]
        tp = prev.cpu if self.clock == "cpu" else prev.wall
        if t >= 1.1 * tp or t - tp >= self.budgets[-1] / 300:
            self.trace.append(self.last)
        self.paused_c += time.process_time() - c0
        self.paused_w += time.perf_counter() - w0

    def finish(self) -> None:
        for b in self.budgets:
            self.at.setdefault(b, self.last)
        if self.trace[-1] is not self.last:
            self.trace.append(self.last)


# ----------------------------------------------------------------------------- methods
def run_gnvpro(cfg_fn: Callable[[], object], cls=gnvpro.GNvpro):
    def run(model: nn.Sequential, p: Problem, rec: Recorder, fl: Flat) -> None:
        opt = cls(model, loss=p.kind, alpha_w=p.alpha_w, alpha_theta=p.alpha_theta,
                  config=cfg_fn())
        while True:
            opt.step(p.x, p.y)
            rec.done(fl.get(model))
    return run


def run_torch_lbfgs(model, p: Problem, rec: Recorder, fl: Flat) -> None:
    opt = torch.optim.LBFGS(model.parameters(), max_iter=1, line_search_fn="strong_wolfe",
                            tolerance_grad=0.0, tolerance_change=0.0)

    def closure():
        opt.zero_grad()
        loss = objective(model, p)
        loss.backward()
        return loss
    while True:
        opt.step(closure)
        rec.done(fl.get(model))


def run_adam(lr: float):
    def run(model, p: Problem, rec: Recorder, fl: Flat) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        while True:
            opt.zero_grad()
            objective(model, p).backward()
            opt.step()
            rec.done(fl.get(model))
    return run


def _ridge_scale(model, p: Problem, fl: Flat) -> Tensor:
    """√α_W on the head's entries, √α_θ on the others."""
    head = head_name(model) + "."
    is_head = torch.cat([torch.full((n,), k.startswith(head)) for k, n in
                         zip(fl.names, fl.sizes, strict=True)])
    return torch.where(is_head, math.sqrt(p.alpha_w), math.sqrt(p.alpha_theta)).double()


def _residual_fn(model, p: Problem, fl: Flat) -> Callable[[Tensor], Tensor]:
    """r(flat) with ½‖r‖² = Φ (least squares only)."""
    scale = _ridge_scale(model, p, fl)

    def r(flat: Tensor) -> Tensor:
        s = functional_call(model, fl.unflatten(flat), (p.x,))
        return torch.cat([((s - p.y) / math.sqrt(len(p.x))).reshape(-1), scale * flat])
    return r


def _dense_jacobian(model, p: Problem, fl: Flat, flat: Tensor) -> np.ndarray:
    """[∂vec(S)/√n ; diag(√α)] by per-sample jacrev (vmap over the samples)."""
    reg = torch.diag(_ridge_scale(model, p, fl))

    def one(f: Tensor, xi: Tensor) -> Tensor:
        return functional_call(model, fl.unflatten(f), (xi[None],))[0]
    J = vmap(jacrev(one), in_dims=(None, 0))(flat, p.x) / math.sqrt(len(p.x))
    return torch.cat([J.reshape(-1, flat.numel()), reg]).numpy()


def dense_jacobian_mb(p: Problem) -> float:
    n_par = sum(v.numel() for v in p.model.parameters())
    return (p.y.numel() + n_par) * n_par * 8 / 2**20


def run_scipy(method: str, lsmr: bool = False):
    def run(model, p: Problem, rec: Recorder, fl: Flat) -> None:
        from scipy.optimize import least_squares
        from scipy.sparse.linalg import LinearOperator

        r = _residual_fn(model, p, fl)

        def fun(v: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return r(torch.from_numpy(v)).numpy()

        calls = [0]

        def jac(v: np.ndarray, *_):
            flat = torch.from_numpy(v.copy())
            if calls[0]:  # jac is evaluated at every accepted iterate (first: at x0)
                rec.done(flat)
            calls[0] += 1
            if not lsmr:
                return _dense_jacobian(model, p, fl, flat)
            m = p.y.numel() + flat.numel()
            return LinearOperator(
                (m, flat.numel()), dtype=np.float64,
                matvec=lambda u: jvp(r, (flat,), (torch.from_numpy(
                    np.ascontiguousarray(u).reshape(-1)),))[1].detach().numpy(),
                rmatvec=lambda u: vjp(r, flat)[1](torch.from_numpy(
                    np.ascontiguousarray(u).reshape(-1)))[0].detach().numpy())
        kw = {"tr_solver": "lsmr"} if lsmr else {}
        res = least_squares(fun, fl.get(model).numpy(), jac=jac, method=method,
                            max_nfev=10**9, ftol=1e-15, xtol=1e-15, gtol=1e-15, **kw)
        rec.done(torch.from_numpy(res.x))
    return run


def run_torchmin(method: str):
    def run(model, p: Problem, rec: Recorder, fl: Flat) -> None:
        res = torchmin.minimize(lambda f: objective_from(model, fl.unflatten(f), p),
                                fl.get(model), method=method, max_iter=10**9, tol=1e-15,
                                callback=lambda f: rec.done(f))
        rec.done(res.x)
    return run


def methods_for(p: Problem, jac_mb: float) -> tuple[dict[str, Callable], dict[str, str]]:
    """The methods that run on ``p`` and, by name, why the others do not."""
    ms: dict[str, Callable] = {
        "gnvpro": run_gnvpro(lambda: gnvpro.GNvproConfig(threads=1)),
        "gnvpro-tn": run_gnvpro(lambda: gnvpro.GNvproConfig.truncated_gauss_newton(threads=1)),
        "gnvpro-tr": run_gnvpro(lambda: gnvpro.GNvproConfig.trust_region(threads=1)),
        "gnvpro-lbfgs": run_gnvpro(lambda: gnvpro.GNvproConfig(
            descent=gnvpro.LBFGSTwoLoop(), inner_forcing=1e-2, threads=1)),
        "lbfgs-vpro": run_gnvpro(lambda: gnvpro.LBFGSVarProConfig(threads=1),
                                 gnvpro.LBFGSVarPro),
        "torch-lbfgs": run_torch_lbfgs,
    }
    ms.update({f"adam lr={lr:g}": run_adam(lr) for lr in ADAM_LRS})
    skipped = {}
    if p.kind == "least_squares":
        mb = dense_jacobian_mb(p)
        for m in ("trf", "lm"):
            if mb <= jac_mb:
                ms[f"scipy-{m}"] = run_scipy(m)
            else:
                skipped[f"scipy-{m}"] = (f"skipped: the dense Jacobian would take {mb:.0f} MB "
                                         f"> --jac-mb {jac_mb:g}")
        ms["scipy-trf-lsmr"] = run_scipy("trf", lsmr=True)
    for m in ("newton-cg", "trust-krylov"):
        if torchmin is not None:
            ms[m] = run_torchmin(m)
        else:
            skipped[m] = "left out: pytorch-minimize (torchmin) is not installed"
    return ms, skipped


# ----------------------------------------------------------------------------- driver
@dataclass
class Result:
    """One (problem, method, seed) run: Φ, the test metric and times at each budget; trace."""

    at: dict[float, dict] = field(default_factory=dict)
    trace: list[tuple[float, float]] = field(default_factory=list)  # (seconds, Φ)
    error: str = ""


def evaluate(p: Problem, fl: Flat, flat: Tensor) -> tuple[float, float]:
    """(Φ on the training data, test metric) at the flat parameters (the shared evaluation)."""
    m = copy.deepcopy(p.model)
    fl.load(m, flat)
    with torch.no_grad():
        return float(objective(m, p)), test_metric(m, p)


def run_one(run: Callable, p: Problem, budgets: list[float], clock: str) -> Result:
    """Run one method from p's initial weights to the largest budget and evaluate it."""
    model = copy.deepcopy(p.model)
    fl = Flat(model)
    rec = Recorder(sorted(budgets), clock)
    handles = [m.register_forward_pre_hook(rec.check) for m in model.modules()
               if not list(m.children())]
    out = Result()
    rec.start(fl.get(model))
    try:
        run(model, p, rec, fl)
    except OutOfTime:
        pass
    except Exception as e:  # a peer that fails is reported, not fatal
        out.error = f"{type(e).__name__}: {str(e)[:120]}"
    rec.finish()
    for h in handles:
        h.remove()
    for b, itr in rec.at.items():
        phi, met = evaluate(p, fl, itr.flat)
        out.at[b] = {"phi": phi, "metric": met, "cpu": itr.cpu, "wall": itr.wall, "it": itr.it}
    for itr in rec.trace:
        out.trace.append((itr.cpu if clock == "cpu" else itr.wall, evaluate(p, fl, itr.flat)[0]))
    return out


def run_problem(name: str, seeds: int, budgets: list[float], clock: str, jac_mb: float,
                warmup: float) -> tuple[dict[str, list[Result]], dict[str, str], list[str],
                                        Problem]:
    """Every method on every seed of one problem (after a warm-up of each)."""
    p0 = make_problem(name, 0)
    ms, skipped = methods_for(p0, jac_mb)
    notes: list[str] = []
    for run in ms.values():
        run_one(run, p0, [warmup], clock)
    res: dict[str, list[Result]] = {m: [] for m in ms}
    for s in range(seeds):
        p = p0 if s == 0 else make_problem(name, s)
        for m, run in ms.items():
            res[m].append(run_one(run, p, budgets, clock))
            if res[m][-1].error:
                notes.append(f"{name} seed {s} {m}: {res[m][-1].error}")
            print(f"  {name} seed {s} {m:16s} Φ={res[m][-1].at[budgets[-1]]['phi']:.4e}",
                  flush=True)
    return res, skipped, notes, p0


# ----------------------------------------------------------------------------- report
def _mean_std(v: list[float]) -> tuple[float, float]:
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def collapse_adam(res: dict[str, list[Result]], b: float) -> tuple[str, list[Result]]:
    """The Adam learning rate with the lowest mean Φ at budget b (chosen after the fact)."""
    adams = {m: r for m, r in res.items() if m.startswith("adam")}
    best = min(adams, key=lambda m: statistics.mean(x.at[b]["phi"] for x in adams[m]))
    return best, adams[best]


def cell_rows(res: dict[str, list[Result]], b: float) -> dict[str, list[Result]]:
    """Methods of one (problem, budget) cell, Adam reduced to its best learning rate."""
    best, runs = collapse_adam(res, b)
    rows = {m: r for m, r in res.items() if not m.startswith("adam")}
    rows[f"adam (best: {best.split()[1]})"] = runs
    return rows


def first_time(trace: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, phi in trace if phi <= target), None)


def time_to_target(runs: list[Result], target: float) -> str:
    ts = [t for t in (first_time(r.trace, target) for r in runs) if t is not None]
    if not ts:
        return "—"
    s = f"{statistics.median(ts):.3g}"
    return s if len(ts) == len(runs) else f"{s} ({len(ts)}/{len(runs)})"


def problem_target(res: dict[str, list[Result]], b: float) -> float:
    return 1.05 * min(statistics.mean(x.at[b]["phi"] for x in r) for r in res.values())


def problem_tables(name: str, p: Problem, res: dict[str, list[Result]], skipped: dict[str, str],
                   budgets: list[float], clock: str) -> tuple[list[str], list[tuple]]:
    """Markdown for one problem and, per budget, (budget, best peer, {gnvpro method: mean Φ /
    the best peer's mean Φ})."""
    metric = "test rel. err" if p.kind == "least_squares" else "test acc."
    target = problem_target(res, budgets[-1])
    n_par = sum(v.numel() for v in p.model.parameters())
    lines = [f"### {name} ({p.kind}, n_train {len(p.x)}, {n_par} parameters, "
             f"α_W = α_θ = {p.alpha_w:g}; target Φ = {target:.4e})", ""]
    cells = []
    for b in budgets:
        rows = cell_rows(res, b)
        lines += [f"Budget {b:g} {clock} s:", "",
                  f"| method | Φ mean ± std | {metric} | iterations | cpu s | wall s | "
                  "s to target |", "|---|---|---|---|---|---|---|"]
        means = {}
        for m, runs in rows.items():
            phi = _mean_std([r.at[b]["phi"] for r in runs])
            means[m] = phi[0]
            med = {k: statistics.median(r.at[b][k] for r in runs)
                   for k in ("metric", "it", "cpu", "wall")}
            ttt = time_to_target(runs, target) if b == budgets[-1] else ""
            lines.append(f"| {m} | {phi[0]:.4e} ± {phi[1]:.1e} | {med['metric']:.4g} | "
                         f"{med['it']:.0f} | {med['cpu']:.2f} | {med['wall']:.2f} | {ttt} |")
        lines += [f"| {m} | {why} | | | | | |" for m, why in skipped.items()]
        peers = {m: v for m, v in means.items() if m not in GNVPRO_METHODS}
        best = min(peers, key=peers.get)
        ratio = means["gnvpro"] / peers[best]
        cells.append((b, best, {m: means[m] / peers[best] for m in GNVPRO_METHODS
                                if m in means}))
        lines += ["", f"Φ(gnvpro) / Φ(best peer: {best}) = {ratio:.3g}", ""]
    return lines, cells


def ratio_table(summary: list[tuple]) -> list[str]:
    """Every cell's Φ(method) / Φ(best peer) for the gnvpro methods, and per method the cells
    where it is at most 1."""
    ms = [m for m in GNVPRO_METHODS if any(m in r for *_, r in summary)]
    lines = ["## Ratios to the best peer (mean Φ over the seeds)", "",
             "| problem | budget | best peer | " + " | ".join(ms) + " |",
             "|---|---|---|" + "---|" * len(ms)]
    lines += [f"| {p} | {b:g} | {best} | " + " | ".join(
        f"{r[m]:.4f}" if m in r else "" for m in ms) + " |" for p, b, best, r in summary]
    lines.append("")
    for m in ms:
        wins = [r[m] <= 1 for *_, r in summary if m in r]
        lines.append(f"cells where {'GNvpro default' if m == 'gnvpro' else m} <= best peer: "
                     f"{sum(wins)} of {len(wins)}")
    return lines


def plot_problem(name: str, res: dict[str, list[Result]], budgets: list[float], clock: str,
                 out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    best, _ = collapse_adam(res, budgets[-1])
    shown = [m for m in res if not m.startswith("adam") or m == best]
    for i, m in enumerate(shown):
        for s, r in enumerate(res[m]):
            t = [max(tt, 1e-4) for tt, _ in r.trace]
            ax.step(t, [phi for _, phi in r.trace], where="post", color=f"C{i % 10}",
                    alpha=0.8, lw=1.2, label=m if s == 0 else None,
                    ls="-" if m in GNVPRO_METHODS else "--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{clock} seconds")
    ax.set_ylabel("Φ (training objective)")
    ax.set_title(f"{name}: Φ vs {clock} seconds (every seed)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)


def header(args: argparse.Namespace) -> list[str]:
    return [
        "# Peer benchmark (benchmarks/peers.py)", "",
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread, float64; "
        f"budgets {args.budgets} {args.clock} seconds; seeds 0-{args.seeds - 1}; "
        f"problems {', '.join(args.problems)}.",
        "Φ = data loss + (α_W/2)‖W‖² + (α_θ/2)‖θ‖² on the training data (mean ± std over seeds); "
        "test metric, iterations, cpu and wall seconds of the last iterate completed within the "
        "budget: medians over seeds. Adam: the learning rate of {} with the lowest mean Φ in "
        "each cell, chosen after the fact. Target: 1.05 × the lowest mean Φ of any method at "
        "the largest budget; s to target: median first time over the seeds that reach it "
        "(k/n when not all do).".format(", ".join(f"{lr:g}" for lr in ADAM_LRS)), ""]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/peers")
    ap.add_argument("--budgets", default=None, help="comma-separated seconds (0.5,2,8)")
    ap.add_argument("--seeds", type=int, default=None, help="3 (1 with --quick)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--problems", default=None,
                    help="comma-separated, of " + ", ".join([*SPECS, "cdr"]))
    ap.add_argument("--jac-mb", type=float, default=256.0,
                    help="memory cap of scipy's dense Jacobian (MB)")
    ap.add_argument("--warmup", type=float, default=0.1, help="warm-up budget (s)")
    ap.add_argument("--quick", action="store_true",
                    help="one seed, budgets 0.2,0.5, problems wine,diabetes")
    args = ap.parse_args(argv)
    q = args.quick
    args.budgets = [float(b) for b in (args.budgets or ("0.2,0.5" if q else "0.5,2,8"))
                    .split(",")]
    args.seeds = args.seeds or (1 if q else 3)
    args.problems = (args.problems or ("wine,diabetes" if q else
                                       ",".join([*SPECS, "cdr"]))).split(",")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines, notes = header(args), []
    summary: list[tuple] = []  # (problem, budget, best peer, ratios)
    if torchmin is None:
        print("note: pytorch-minimize (torchmin) is not installed: newton-cg and trust-krylov "
              "left out")
    for name in args.problems:
        try:
            res, skipped, pnotes, p = run_problem(name, args.seeds, args.budgets, args.clock,
                                         args.jac_mb, args.warmup)
        except FileNotFoundError as e:
            notes.append(f"{name} skipped: {str(e).splitlines()[0][:160]}")
            continue
        notes += pnotes
        tab, cells = problem_tables(name, p, res, skipped, args.budgets, args.clock)
        notes += [f"{name}: {m} {why}" for m, why in skipped.items()]
        lines += tab
        summary += [(name, *cell) for cell in cells]
        plot_problem(name, res, args.budgets, args.clock, out)
        (out / "peers.md").write_text("\n".join([*lines, *notes]) + "\n")
    lines += ["## Notes", "", *(f"- {n}" for n in notes), "", *ratio_table(summary)]
    text = "\n".join(lines) + "\n"
    (out / "peers.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
