"""The same training on a CUDA device as on the CPU (skipped without one)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from gnvpro import GNvpro
from gnvpro_experiments import cli
from gnvpro_experiments.models import mlp
from gnvpro_experiments.problems.base import Split
from gnvpro_experiments.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _fp64_no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.mark.parametrize("loss", ["least_squares", "cross_entropy"])
def test_gnvpro_iterates_on_cuda_match_cpu(tiny_regression, loss):
    _fp64_no_tf32()
    model, x, y = tiny_regression
    if loss == "cross_entropy":
        y = (x[:, 0] > 0).long()
    gpu_model = copy.deepcopy(model).cuda()
    cpu = GNvpro(model, loss, alpha_w=1e-3, alpha_theta=1e-3).run(x, y, max_iter=6)
    gpu = GNvpro(gpu_model, loss, alpha_w=1e-3, alpha_theta=1e-3).run(x.cuda(), y.cuda(),
                                                                      max_iter=6)
    for a, b in zip(cpu.records, gpu.records, strict=True):
        assert a.accepted == b.accepted and a.krylov_iters == b.krylov_iters
        assert b.loss == pytest.approx(a.loss, rel=1e-8)
    for p, q in zip(model.parameters(), gpu_model.parameters(), strict=True):
        assert q.is_cuda and torch.allclose(p, q.cpu(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["gnvpro", "gn", "lbfgs-vpro", "adam", "gnvpro-stochastic",
                                    "gn-stochastic", "lbfgs-vpro-stochastic"])
def test_every_method_trains_on_cuda(method):
    _fp64_no_tf32()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 2, generator=g, dtype=torch.float64)
    y = (x[:, 0] * x[:, 1] > 0).long()
    data = Split(x[:80].cuda(), y[:80].cuda(), x[80:].cuda(), y[80:].cuda(), x[80:].cuda(),
                 y[80:].cuda(), meta={"n_classes": 2})
    model = mlp(2, [8], 2, activation="tanh", dtype=torch.float64, generator=g).cuda()
    settings = dict(loss="cross_entropy", alpha_w=1e-3, alpha_theta=1e-3, max_work=40,
                    descent={"max_products": 10}, epochs=1, n_batches=2, iters_per_batch=2)
    recs = train(method, model, data, settings)
    assert recs[-1]["loss"] < recs[0]["loss"]
    assert all(p.is_cuda for p in model.parameters())


def test_cli_run_on_cuda(tmp_path):
    out = tmp_path / "ell"
    rc = cli.main(["run", "ellipse", "--device", "cuda", "--methods", "gnvpro,gn",
                   "--budget-scale", "0.05", "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["device"] == "cuda"
    assert all(0.0 <= r["test"] <= 1.0 for rows in summary["methods"].values() for r in rows)
