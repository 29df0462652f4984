"""Parity with the paper's reference implementation at its own θ0 on the real CDR data."""

import pytest
import torch
from stacked_residual import StackedResidual

from gnvpro import GNvpro, GNvproConfig, ReducedObjective, make_loss, split_model
from gnvpro_experiments.problems.cdr import (
    default_cdr_path,
    default_reference_path,
    from_reference_flat,
    load_cdr_mat,
    load_reference,
    reference_network,
    reference_split,
    to_reference_flat,
)

if not (default_cdr_path().exists() and default_reference_path().exists()):
    pytest.skip("shared CDR data / reference fixture not found", allow_module_level=True)

TOL = 1e-10


def _rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def at_theta0():
    ref = load_reference()
    Y, C = load_cdr_mat()
    sp = reference_split(ref, Y, C)
    net = reference_network(ref)
    split = split_model(net, probe=sp.x_train)
    obj = ReducedObjective(split, make_loss("least_squares"), sp.x_train, sp.y_train,
                           float(ref["alpha2"]), float(ref["alpha1"]))
    theta = obj.features.layout.flatten(split.feature_params(), torch.float64).detach()
    return ref, sp, net, obj, obj.evaluate(theta)


def _to_ref(obj, flat):
    return to_reference_flat(obj.features.layout.unflatten(flat), prefix="0")


def _from_ref(obj, flat):
    named = from_reference_flat(torch.as_tensor(flat), obj.split.feature_params(), prefix="0")
    return obj.features.layout.flatten(named, torch.float64)


def test_value_and_inner_solution(at_theta0):
    ref, _, _, obj, pt = at_theta0
    assert abs(pt.value - float(ref["J0"])) / float(ref["J0"]) < TOL
    assert abs(pt.loss - float(ref["F0"])) / float(ref["F0"]) < TOL
    assert _rel(pt.W, ref["W0"]) < TOL


def test_gradient(at_theta0):
    ref, _, _, obj, pt = at_theta0
    assert _rel(_to_ref(obj, obj.gradient(pt)), ref["grad0_flat"]) < TOL


def test_gauss_newton_product_and_jacobian(at_theta0):
    ref, _, _, obj, pt = at_theta0
    v = _from_ref(obj, ref["v_flat"])
    assert _rel(_to_ref(obj, obj.gn_operator(pt)(v)), ref["Hv_flat"]) < TOL
    dS, dW = obj.jacobian(pt).forward(v)
    assert _rel(dW, ref["dW0_v"]) < TOL
    # first residual block of J_r v: the reference stores it column-major (72 × 400)
    jv_loss = (dS / obj.n**0.5).T
    assert _rel(jv_loss, ref["Jv_resid_loss"]) < TOL
    r = StackedResidual(obj, pt)
    assert _rel((r.value()[: pt.S.numel()].reshape(pt.S.shape)).T, ref["res0_loss"]) < TOL


def test_single_level_run_beats_reference_level1(at_theta0):
    """Paper settings: α = 1e-10, ≤ 20 Krylov vectors, tol 1e-2, 200 work units."""
    ref, sp, _, _, _ = at_theta0
    net = reference_network(ref)
    opt = GNvpro(net, alpha_w=1e-10, alpha_theta=1e-10, config=GNvproConfig.trust_region())
    hist = opt.run(sp.x_train, sp.y_train, max_work=200)
    assert hist.final.work_units <= 200 + 2 * 20 + 2
    assert hist.final.loss <= float(ref["J_end_levels"][0])
    # the model holds the result
    with torch.no_grad():
        S = net(sp.x_train)
    assert abs(0.5 / 400 * float((S - sp.y_train).square().sum()) - hist.final.data_loss) < 1e-8
