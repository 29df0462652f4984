"""Smoke test of benchmarks/peers.py --quick (tiny budgets): the report has every method row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("gnvpro", "gnvpro-tn", "gnvpro-tr", "gnvpro-lbfgs", "lbfgs-vpro", "torch-lbfgs",
           "adam (best: lr=", "scipy-trf", "scipy-lm", "scipy-trf-lsmr", "newton-cg",
           "trust-krylov")


def test_peers_quick(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("torchmin")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--quick",
                    "--budgets", "0.03,0.06", "--warmup", "0.02", "--jac-mb", "1",
                    "--out", str(tmp_path)],
                   check=True, cwd=ROOT, env=env, capture_output=True, timeout=300)
    text = (tmp_path / "peers.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    for m in METHODS:
        assert any(r.startswith(f"| {m}") for r in rows), m
    assert "cells where GNvpro default <= best peer:" in text
    assert "cells where gnvpro-lbfgs <= best peer:" in text
    assert (tmp_path / "wine.png").is_file() and (tmp_path / "diabetes.png").is_file()


def test_residual_and_dense_jacobian() -> None:
    """½‖r‖² is the shared Φ and the per-sample dense Jacobian is r's (what scipy gets)."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import peers
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from gnvpro_experiments.models import mlp

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(
        7, 2, generator=g, dtype=torch.float64)
    model = mlp(3, [4], 2, generator=g)
    p = peers.Problem("tiny", "least_squares", x, y, x, y, 1e-2, 1e-3, model)
    fl = peers.Flat(model)
    flat = fl.get(model)
    r = peers._residual_fn(model, p, fl)
    assert torch.allclose(0.5 * r(flat).square().sum(), peers.objective(model, p))
    J = torch.autograd.functional.jacobian(r, flat)
    assert torch.allclose(torch.from_numpy(peers._dense_jacobian(model, p, fl, flat)), J)


def test_unit_cost_splits_seconds_by_mode(tmp_path: Path) -> None:
    """benchmarks/unit_cost.py: ms per work unit of each mode alone, and from a run's records
    split by the mode each iteration ran (the first record of a level is its start)."""
    run = tmp_path / "runs" / "seed-0"
    run.mkdir(parents=True)
    recs = [{"level": 1, "seconds": 0.0, "work_units": 2.0},
            {"level": 1, "seconds": 0.1, "work_units": 4.0, "descent": "lbfgs"},
            {"level": 1, "seconds": 0.5, "work_units": 24.0, "descent": "cg"},
            {"level": 2, "seconds": 0.6, "work_units": 26.0, "descent": "cg"},
            {"level": 2, "seconds": 0.7, "work_units": 28.0, "descent": "lbfgs"}]
    (run / "history.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "unit_cost.py"), "--problems",
                    "smooth10", "--seconds", "0.05", "--records", str(tmp_path / "runs"),
                    "--out", str(tmp_path)], check=True, cwd=ROOT, env=env,
                   capture_output=True, timeout=300)
    rows = [r for r in (tmp_path / "unit_cost.md").read_text().splitlines()
            if r.startswith("| smooth10") or "seed-0" in r]
    assert len(rows) == 2
    # records: cg 1 iteration, 0.4 s / 20 units = 20 ms; L-BFGS 2 iterations, 0.2 s / 4 units
    assert rows[1].split(" | ")[1:] == ["1", "20", "2", "50", "0.40 |"]
