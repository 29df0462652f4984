"""Paper networks: antisymmetric RK4 ResNet (interpolation, RK4, refinement, regulariser), CNN,
MLP.  float64 throughout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from gnvpro_experiments.models import (
    AntisymmetricResNet,
    PaperCNN,
    interpolation_weights,
    mlp,
    paper_cnn,
    paper_network,
    refine_network,
    time_smoothness,
)

DT = torch.float64


def _randomise(net: AntisymmetricResNet, seed: int = 0) -> None:
    """Distinct random weights at every node (diagonal of Θ kept 0), nonzero biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        net.theta.diagonal(dim1=-2, dim2=-1).zero_()


# ---------------------------------------------------------------------------------------------
# interpolation rule


def test_interpolation_rule_nodes_and_midpoints():
    nodes = [0.0, 0.5, 1.0]
    assert interpolation_weights(0.0, nodes) == [(0, 1.0)]
    assert interpolation_weights(0.5, nodes) == [(1, 1.0)]  # on a node: that node only
    assert interpolation_weights(1.0, nodes) == [(2, 1.0)]  # last node
    assert interpolation_weights(1.5, nodes) == [(2, 1.0)]  # after the last node
    assert interpolation_weights(0.25, nodes) == [(0, 0.5), (1, 0.5)]
    assert interpolation_weights(0.75, nodes) == [(1, 0.5), (2, 0.5)]
    w = interpolation_weights(0.2, [0.0, 1.0])
    assert [j for j, _ in w] == [0, 1]
    assert w[0][1] == pytest.approx(0.8, abs=1e-15) and w[1][1] == pytest.approx(0.2, abs=1e-15)
    with pytest.raises(ValueError):
        interpolation_weights(-0.1, nodes)


def test_weights_at_interpolates_theta_and_antisymmetry():
    net = AntisymmetricResNet(3, 5, n_nodes=3, T=2.0, dtype=DT)
    _randomise(net)
    th, b = net.theta.detach(), net.bias.detach()
    eye = torch.eye(5, dtype=DT)
    for t, (tht, bt) in {
        0.0: (th[0], b[0]),
        0.5: (0.5 * th[0] + 0.5 * th[1], 0.5 * b[0] + 0.5 * b[1]),
        1.0: (th[1], b[1]),
        1.5: (0.5 * th[1] + 0.5 * th[2], 0.5 * b[1] + 0.5 * b[2]),
        2.0: (th[2], b[2]),
    }.items():
        K, bb = net.weights_at(t)
        torch.testing.assert_close(K, tht - tht.T - 1e-4 * eye, rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(bb, bt, rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(K + K.T, -2e-4 * eye, rtol=0, atol=1e-15)
    # the diagonal of Θ never affects K
    K, _ = net.weights_at(0.7)
    with torch.no_grad():
        net.theta.diagonal(dim1=-2, dim2=-1).add_(3.0)
    K2, _ = net.weights_at(0.7)
    assert torch.equal(K2, K)


def _numpy_forward(net: AntisymmetricResNet, x: np.ndarray) -> np.ndarray:
    """Independent implementation: np.interp of every weight entry, classical RK4."""
    K0 = net.opening.weight.detach().numpy()
    th = net.theta.detach().numpy()
    b = net.bias.detach().numpy()
    nodes = np.linspace(0.0, net.T, net.n_nodes)

    def interp(a, t):
        flat = a.reshape(a.shape[0], -1)
        return np.array([np.interp(t, nodes, flat[:, k]) for k in range(flat.shape[1])]).reshape(
            a.shape[1:]
        )

    def f(z, t):
        tht = interp(th, t)
        K = tht - tht.T - net.shift * np.eye(net.width)
        return np.tanh(z @ K.T + interp(b, t))

    z = np.tanh(x @ K0.T)
    h = net.T / net.n_steps
    for k in range(net.n_steps):
        t = k * h
        a1 = f(z, t)
        a2 = f(z + h / 2 * a1, t + h / 2)
        a3 = f(z + h / 2 * a2, t + h / 2)
        a4 = f(z + h * a3, t + h)
        z = z + h * (a1 / 6 + a2 / 3 + a3 / 3 + a4 / 6)
    return z


@pytest.mark.parametrize(("n_nodes", "n_steps", "T"), [(2, 1, 1.0), (4, 3, 2.0), (3, 5, 4.0)])
def test_forward_matches_independent_rk4(n_nodes, n_steps, T):
    net = AntisymmetricResNet(4, 6, n_nodes=n_nodes, T=T, n_steps=n_steps, dtype=DT)
    _randomise(net, seed=n_nodes)
    x = torch.randn(7, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    z = net(x)
    assert z.shape == (7, 6) and z.dtype == DT
    np.testing.assert_allclose(
        z.detach().numpy(), _numpy_forward(net, x.numpy()), rtol=1e-13, atol=1e-14
    )
    st = net.stages(x)
    assert len(st) == 4 * n_steps
    torch.testing.assert_close(st[0], torch.tanh(x @ net.opening.weight.T))
    assert net.stage_times()[:4] == [0.0, T / (2 * n_steps), T / (2 * n_steps), T / n_steps]


def test_initialisation():
    g1 = torch.Generator().manual_seed(5)
    g2 = torch.Generator().manual_seed(5)
    net = paper_network(50, 3, 40, n_nodes=3, generator=g1)
    net2 = paper_network(50, 3, 40, n_nodes=3, generator=g2)
    f = net[0]
    assert isinstance(f, AntisymmetricResNet) and isinstance(net[1], nn.Linear)
    assert f.opening.bias is None and f.theta.dtype == DT
    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(p, q)  # reproducible
    th = f.theta.detach()
    assert torch.equal(th[0], th[1]) and torch.equal(th[1], th[2])  # equal at all nodes
    assert torch.count_nonzero(th[0].diagonal()) == 0
    assert torch.count_nonzero(f.bias) == 0
    assert torch.count_nonzero(net[1].weight) == 0 and torch.count_nonzero(net[1].bias) == 0
    off = th[0][~torch.eye(40, dtype=torch.bool)]
    assert off.std().item() == pytest.approx(math.sqrt(2 / 40), rel=0.1)
    assert f.opening.weight.std().item() == pytest.approx(math.sqrt(2 / 50), rel=0.1)
    with pytest.raises(ValueError):
        AntisymmetricResNet(3, 4, n_nodes=0)


def test_jvp_taylor_and_vjp_adjoint():
    net = AntisymmetricResNet(3, 4, n_nodes=3, T=1.5, n_steps=2, open_bias=True, dtype=DT)
    _randomise(net, seed=3)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 3, dtype=DT, generator=gen)
    params = {k: v.detach() for k, v in net.named_parameters()}
    v = {k: torch.randn(p.shape, dtype=DT, generator=gen) for k, p in params.items()}

    def F(p):
        return functional_call(net, p, (x,))

    z0, Jv = jvp(F, (params,), (v,))
    torch.testing.assert_close(z0, net(x).detach())
    hs = [2.0**-k for k in range(3, 9)]
    e0, e1 = [], []
    for h in hs:
        zh = F({k: params[k] + h * v[k] for k in params})
        e0.append(torch.linalg.norm(zh - z0).item())
        e1.append(torch.linalg.norm(zh - z0 - h * Jv).item())
    order0 = np.polyfit(np.log(hs), np.log(e0), 1)[0]
    order1 = np.polyfit(np.log(hs), np.log(e1), 1)[0]
    assert order0 == pytest.approx(1.0, abs=0.1)
    assert order1 == pytest.approx(2.0, abs=0.1)
    # adjoint
    u = torch.randn(z0.shape, dtype=DT, generator=gen)
    _, pullback = vjp(F, params)
    (JTu,) = pullback(u)
    lhs = (Jv * u).sum()
    rhs = sum((JTu[k] * v[k]).sum() for k in params)
    assert abs(lhs - rhs) / abs(lhs) < 1e-12


def test_refine_bit_exact_and_forward_unchanged():
    net = AntisymmetricResNet(3, 5, n_nodes=3, T=2.0, n_steps=4, dtype=DT)
    _randomise(net, seed=7)
    x = torch.randn(9, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    new = net.refine()
    assert new.n_nodes == 5 and new.n_steps == 4 and new.T == 2.0 and new.theta.dtype == DT
    assert new is not net and new.theta is not net.theta
    assert torch.equal(new.opening.weight, net.opening.weight)
    assert torch.equal(new.theta[0::2], net.theta) and torch.equal(new.bias[0::2], net.bias)
    torch.testing.assert_close(
        new.theta[1::2], (net.theta[:-1] + net.theta[1:]) / 2, rtol=0, atol=0
    )
    # linear interpolation of linear data is exact: same function
    torch.testing.assert_close(new(x), net(x), rtol=1e-14, atol=1e-14)
    # one RK4 step on 2 nodes (CDR level 1 -> 2): the stage times 0, 1/2, 1 fall on new nodes
    cdr = AntisymmetricResNet(3, 5, n_nodes=2, dtype=DT)
    _randomise(cdr, seed=8)
    assert torch.equal(cdr.refine()(x), cdr(x))
    # Indian Pines variant: the step count follows the weight grid
    ip = AntisymmetricResNet(3, 5, n_nodes=4, T=4.0, n_steps=3, dtype=DT).refine(True)
    assert ip.n_nodes == 7 and ip.n_steps == 6
    assert ip.refine(steps_follow_grid=True).n_steps == 12


def test_refine_network_copies_head():
    seq = paper_network(3, 2, 4, n_nodes=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        seq[1].weight.normal_()
        seq[1].bias.normal_()
    x = torch.randn(5, 3, dtype=DT)
    new = refine_network(seq)
    assert new[0].n_nodes == 3
    assert torch.equal(new[1].weight, seq[1].weight) and new[1].weight is not seq[1].weight
    assert torch.equal(new(x), seq(x))
    with pytest.raises(ValueError):
        refine_network(nn.Sequential(nn.Linear(2, 2)))


def test_time_smoothness():
    seq = paper_network(3, 2, 4, n_nodes=4, T=3.0, generator=torch.Generator().manual_seed(0))
    B = time_smoothness(seq)
    named = {k: v.detach() for k, v in seq.named_parameters()}
    out = B(named)
    assert set(out) == set(named)
    # equal weights at all nodes (paper initialisation, zero biases): B θ = 0 on Θ and b
    assert out["0.theta"].shape == (3, 4, 4) and torch.count_nonzero(out["0.theta"]) == 0
    assert torch.count_nonzero(out["0.bias"]) == 0
    for k in ("0.opening.weight", "1.weight", "1.bias"):
        assert torch.equal(out[k], named[k])  # identity elsewhere
    # linear in time: ||B θ||^2 = ∫ ||dθ/dt||^2 dt exactly; Δt = 1
    g = torch.Generator().manual_seed(1)
    A, C = torch.randn(4, 4, dtype=DT, generator=g), torch.randn(4, 4, dtype=DT, generator=g)
    t = torch.linspace(0, 3.0, 4, dtype=DT)
    lin = dict(named, **{"0.theta": A + t[:, None, None] * C})
    assert (B(lin)["0.theta"] ** 2).sum().item() == pytest.approx(
        3.0 * (C**2).sum().item(), rel=1e-12
    )
    # torch.func: jvp of a linear map equals the map of the tangent
    feats = seq[0]
    Bf = time_smoothness(feats)
    p = {k: v.detach() for k, v in feats.named_parameters()}
    v = {k: torch.randn(x.shape, dtype=DT, generator=g) for k, x in p.items()}
    _, Bv = jvp(Bf, (p,), (v,))
    for k in p:
        torch.testing.assert_close(Bv[k], Bf(v)[k])
    torch.testing.assert_close(Bf(v)["theta"], (v["theta"][1:] - v["theta"][:-1]) / 1.0)


def test_cnn_shapes_and_init():
    g = torch.Generator().manual_seed(0)
    feats = PaperCNN(3, generator=g, dtype=DT)
    x = torch.randn(2, 3, 32, 32, dtype=DT)
    z = feats(x)
    assert z.shape == (2, 64) and z.dtype == DT and (z >= 0).all()
    assert torch.count_nonzero(feats.conv1.bias) == 0
    assert feats.conv2.weight.std().item() == pytest.approx(math.sqrt(2 / (32 * 25)), rel=0.05)
    net = paper_cnn(in_channels=1, n_classes=10)
    out = net(torch.randn(3, 1, 28, 28, dtype=DT))
    assert out.shape == (3, 10) and torch.count_nonzero(out) == 0  # zero head
    assert net[0](torch.randn(3, 1, 28, 28, dtype=DT)).shape == (3, 64)
    with pytest.raises(ValueError):
        net(torch.randn(3, 3, 28, 28, dtype=DT))


def test_mlp_shapes():
    net = mlp(2, [4, 4, 2], 1, generator=torch.Generator().manual_seed(0))
    lins = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lins] == [(2, 4), (4, 4), (4, 2), (2, 1)]
    assert sum(isinstance(m, nn.Tanh) for m in net) == 3 and isinstance(net[-1], nn.Linear)
    assert all(torch.count_nonzero(m.bias) == 0 for m in lins)
    x = torch.randn(5, 2, dtype=DT)
    assert net(x).shape == (5, 1) and net[:-1](x).shape == (5, 2)
    r = mlp(3, [200], 2, activation="relu", zero_head=True)
    assert isinstance(r[1], nn.ReLU) and torch.count_nonzero(r[-1].weight) == 0
    assert r[0].weight.std().item() == pytest.approx(math.sqrt(2 / 3), rel=0.1)
    with pytest.raises(ValueError):
        mlp(2, [3], 1, activation="sigmoid")
