"""Parity with the paper-era reference (Meganet.m bf96b8e) on the CDR problem, float64:
data split, forward pass, flat parameter layout, multilevel prolongation, level objectives and
the gradient at θ0.  Fixture: shared/reference/cdr_parity.npz (see its README)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gnvpro_experiments.models import AntisymmetricResNet, refine_network
from gnvpro_experiments.problems.base import Split
from gnvpro_experiments.problems.cdr import (
    cdr_split,
    default_cdr_path,
    default_reference_path,
    free_theta_positions,
    from_reference_flat,
    load_cdr_mat,
    load_reference,
    reference_network,
    reference_split,
    to_reference_flat,
)

DT = torch.float64

pytestmark = pytest.mark.skipif(
    not (default_cdr_path().is_file() and default_reference_path().is_file()),
    reason=f"shared CDR files missing ({default_cdr_path()}, {default_reference_path()}); "
    "set $GNVPRO_DATA or place them under ../shared/{data,reference}",
)


@pytest.fixture(scope="module")
def ref():
    return load_reference()


@pytest.fixture(scope="module")
def split(ref) -> Split:
    Y, C = load_cdr_mat()
    return reference_split(ref, Y, C)


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=DT)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


def _load_flat(feats: AntisymmetricResNet, flat) -> None:
    with torch.no_grad():
        for k, v in from_reference_flat(_t(flat), feats).items():
            feats.get_parameter(k).copy_(v)


def _objective(net, x, c, W, alpha1, alpha2=1e-10):
    """J = 0.5/n ||W [Z;1] - C||^2 + α1/2 ||θ_flat||^2 + α2/2 ||W||^2 (W: 72×9, bias last)."""
    feats = net[0]
    Z = feats(x)
    n = x.shape[0]
    S = Z @ W[:, :-1].T + W[:, -1]
    flat = to_reference_flat(dict(feats.named_parameters()))
    return (
        0.5 / n * ((S - c) ** 2).sum()
        + 0.5 * alpha1 * (flat**2).sum()
        + 0.5 * alpha2 * (W**2).sum()
    )


def _varpro_W(Z, c, alpha2=1e-10):
    """argmin_W 0.5/n ||[Z 1] Wᵀ - C||^2 + α2/2 ||W||^2 via an augmented least-squares solve."""
    n = Z.shape[0]
    A = torch.cat([Z, torch.ones(n, 1, dtype=DT)], dim=1) / n**0.5
    A = torch.cat([A, alpha2**0.5 * torch.eye(A.shape[1], dtype=DT)])
    rhs = torch.cat([c / n**0.5, torch.zeros(A.shape[1], c.shape[1], dtype=DT)])
    return torch.linalg.lstsq(A, rhs, driver="gelsd").solution.T


def test_data_and_split(ref, split):
    Y, C = load_cdr_mat()
    assert Y.shape == (800, 55) and C.shape == (800, 72) and Y.dtype == np.float64
    assert split.sizes() == (400, 200, 200) and split.x_train.dtype == DT
    i = int(ref["train_idx"][3])
    assert torch.equal(split.x_train[3], _t(Y[i])) and torch.equal(split.y_train[3], _t(C[i]))
    all_idx = np.concatenate([ref["train_idx"], ref["val_idx"], ref["test_idx"]])
    assert sorted(all_idx.tolist()) == list(range(800))
    s2 = cdr_split(Y, C, ref["val_idx"], ref["train_idx"], ref["test_idx"])
    assert torch.equal(s2.x_train, split.x_val)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="CDR_Data.mat"):
        load_cdr_mat(tmp_path / "nothing.mat")
    import scipy.io

    scipy.io.savemat(tmp_path / "bad.mat", {"Y": np.zeros((55, 3)), "C": np.zeros((70, 3))})
    with pytest.raises(ValueError):
        load_cdr_mat(tmp_path / "bad.mat")


def test_forward_parity_at_theta0(ref, split):
    feats = reference_network(ref)[0]
    x = split.x_train
    st = feats.stages(x)
    assert len(st) == 4
    assert _rel(st[0], _t(ref["Zopen0_train"]).T) <= 1e-12
    for k in range(4):
        assert _rel(st[k], _t(ref["Zstage0_train"][k]).T) <= 1e-12
    assert _rel(feats(x), _t(ref["Z0_train"]).T) <= 1e-12
    # the fixture's K_res are what our interpolation builds at the nodes
    for j, t in enumerate((0.0, 1.0)):
        assert torch.equal(feats.weights_at(t)[0], _t(ref["K_res"][j]))


def test_flat_layout_exact(ref):
    feats = reference_network(ref)[0]
    rows, cols = free_theta_positions(8)
    assert np.array_equal(rows, ref["Theta_free_rows"])
    assert np.array_equal(cols, ref["Theta_free_cols"])
    named = {k: v.detach() for k, v in feats.named_parameters()}
    flat = to_reference_flat(named)
    assert flat.shape == (568,) and torch.equal(flat, _t(ref["theta0_flat"]))
    back = from_reference_flat(flat, named)
    assert set(back) == set(named)
    for k in named:
        assert torch.equal(back[k], named[k])
    # any node count: random flat vectors round-trip exactly; names from a Sequential prefix
    g = torch.Generator().manual_seed(0)
    for nodes, size in ((2, 568), (3, 632), (5, 760)):
        net = reference_network(ref)
        for _ in range({2: 0, 3: 1, 5: 2}[nodes]):
            net = refine_network(net)
        v = torch.randn(size, dtype=DT, generator=g)
        d = from_reference_flat(v, dict(net.named_parameters()), prefix="0")
        assert set(d) == {"0.opening.weight", "0.theta", "0.bias"}
        assert d["0.theta"].shape == (nodes, 8, 8)
        assert torch.count_nonzero(d["0.theta"].diagonal(dim1=-2, dim2=-1)) == 0
        assert torch.equal(to_reference_flat(d, prefix="0"), v)
    with pytest.raises(ValueError):
        from_reference_flat(torch.zeros(600, dtype=DT), feats)


def test_refinement_matches_reference_prolongation(ref):
    net = reference_network(ref)
    for level in (1, 2):
        _load_flat(net[0], ref[f"theta_end_level{level}"])
        net = refine_network(net)
        got = to_reference_flat(dict(net[0].named_parameters()))
        assert torch.equal(got, _t(ref[f"theta_start_level{level + 1}"]))
        assert net[0].n_steps == 1  # CDR: one RK4 step at every level


def test_level_objectives(ref, split):
    x, c = split.x_train, split.y_train
    net = reference_network(ref)
    for level in (1, 2, 3):
        if level > 1:
            net = refine_network(net)
        assert net[0].n_nodes == {1: 2, 2: 3, 3: 5}[level]
        _load_flat(net[0], ref[f"theta_end_level{level}"])
        alpha1 = float(ref["alpha1_levels"][level - 1])
        J_ref = float(ref["J_end_levels"][level - 1])
        with torch.no_grad():
            W_fix = _t(ref[f"W_end_level{level}"])
            J = _objective(net, x, c, W_fix, alpha1).item()
            assert abs(J - J_ref) / J_ref <= 1e-10
            W = _varpro_W(net[0](x), c)
            assert _rel(W, W_fix) <= 1e-8
            assert abs(_objective(net, x, c, W, alpha1).item() - J_ref) / J_ref <= 1e-10


def test_gradient_at_theta0_matches_reference(ref, split):
    """Our Θ[r, c] is the reference's free parameter: gathering our autograd gradient at the
    free positions gives the reference gradient; the diagonal gradient is zero."""
    x, c = split.x_train, split.y_train
    net = reference_network(ref)
    with torch.no_grad():
        W = _varpro_W(net[0](x), c)
    assert _rel(W, _t(ref["W0"])) <= 1e-10
    J = _objective(net, x, c, W, float(ref["alpha1"]))  # W fixed at W*: envelope gradient
    assert abs(J.item() - float(ref["J0"])) / float(ref["J0"]) <= 1e-12
    names = [k for k, _ in net[0].named_parameters()]
    grads = torch.autograd.grad(J, list(net[0].parameters()))
    gd = dict(zip(names, grads, strict=True))
    assert torch.count_nonzero(gd["theta"].diagonal(dim1=-2, dim2=-1)) == 0
    g_flat = to_reference_flat(gd)
    assert _rel(g_flat, _t(ref["grad0_flat"])) <= 1e-10
    assert _rel(gd["theta"], _t(ref["grad0_Theta_res"])) <= 1e-10
    assert _rel(gd["opening.weight"], _t(ref["grad0_K_open"])) <= 1e-10
    assert _rel(gd["bias"], _t(ref["grad0_b_res"])) <= 1e-10
