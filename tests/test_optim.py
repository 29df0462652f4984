"""The public GNvpro API: write-back, records, options, checkpoints and clear errors."""

import pytest
import torch
from torch import nn

from gnvpro import GNvpro, GNvproConfig, load_checkpoint, save_checkpoint, split_model


def test_run_writes_back_and_lowers_loss(tiny_regression):
    model, x, y = tiny_regression
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6)
    hist = opt.run(x, y, max_iter=15, val=(x[:5], y[:5]))
    losses = [r.loss for r in hist.records]
    assert losses[-1] < 0.5 * losses[0]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False))
    rec = hist.final
    for key in ("grad_norm", "radius", "rho", "accepted", "krylov_iters", "work_units", "seconds"):
        assert hasattr(rec, key)
    assert "val" in rec.metrics and "rel_err" in rec.metrics["val"]
    with torch.no_grad():
        S = model(x)
    assert abs(float(0.5 / len(x) * (S - y).square().sum()) - rec.data_loss) < 1e-10


@pytest.mark.parametrize("option", [{"descent": {"kind": "steihaug"},
                                     "search": {"kind": "trust_region"}},
                                    {"jacobian": "kaufman"},
                                    {"jvp_mode": "linearize"}])
def test_options_train(tiny_regression, option):
    model, x, y = tiny_regression
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6, config=GNvproConfig(**option))
    hist = opt.run(x, y, max_iter=8)
    assert hist.final.loss < hist.records[0].loss or hist.records[0].accepted


def test_max_work_budget(tiny_regression):
    model, x, y = tiny_regression
    opt = GNvpro(model, config=GNvproConfig(descent={"kind": "cg", "max_products": 5}))
    hist = opt.run(x, y, max_work=30)
    assert 30 <= hist.final.work_units <= 30 + 2 * 5 + 2
    assert hist.termination.name == "MAX_WORK"


def test_state_dict_roundtrip(tiny_regression, tmp_path):
    model, x, y = tiny_regression
    opt = GNvpro(model)
    opt.run(x, y, max_iter=3)
    sd = opt.state_dict()
    assert "model" not in sd and sd["iteration"] == 3  # optimiser state only, as torch.optim
    save_checkpoint(tmp_path / "ck.pt", model, opt, note="after 3")
    model2 = type(model)(*[type(m)(m.in_features, m.out_features, dtype=torch.float64)
                           if isinstance(m, nn.Linear) else m for m in model])
    opt2 = GNvpro(model2)
    assert load_checkpoint(tmp_path / "ck.pt", model2, opt2) == {"note": "after 3"}
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    rec = opt2.step(x, y)
    assert rec.iteration == 4 and rec.work_units > sd["work"]
    assert len(opt2.state.pairs) == len(opt.state.pairs) + 1 == 4  # TN pairs carried over
    with pytest.raises(ValueError, match="not a GNvpro state dict"):
        opt2.load_state_dict({"radius": None})


def test_named_head_and_float32(tiny_regression):
    _, x, y = tiny_regression

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 6), nn.Tanh())
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            return self.out(self.body(x))

    net = Net().float()
    opt = GNvpro(net, head="out", alpha_w=1e-6, alpha_theta=1e-6)
    hist = opt.run(x.float(), y.float(), max_iter=5)
    assert hist.final.loss < hist.records[0].loss + 1e-6
    assert net.out.weight.dtype == torch.float32


def test_clear_errors(tiny_regression):
    model, x, y = tiny_regression
    with pytest.raises(TypeError, match="nn.Linear"):
        GNvpro(nn.Sequential(nn.Linear(3, 2), nn.Tanh()))
    with pytest.raises(TypeError, match="head="):
        GNvpro(nn.Linear(3, 2))

    class Softmaxed(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.out = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return torch.softmax(self.out(torch.tanh(self.body(x))), -1)

    with pytest.raises(ValueError, match="not the model's last operation"):
        GNvpro(Softmaxed().double(), head="out").step(x, y)
    opt = GNvpro(model)
    with pytest.raises(ValueError, match="samples"):
        opt.step(x, y[:-1])
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        GNvpro(model).step(bad, y)
    bady = y.clone()
    bady[1, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        GNvpro(model).step(x, bady)
    with pytest.raises(ValueError, match="columns|outputs|shape"):
        GNvpro(model).step(x, y[:, :1])
    with pytest.raises(ValueError, match="max_work or max_iter"):
        GNvpro(model, config=GNvproConfig(grad_rtol=0)).run(x, y)


def test_split_finds_features(tiny_regression):
    model, x, _ = tiny_regression
    split = split_model(model, probe=x)
    assert split.n_features == 4 and split.n_outputs == 2 and split.has_bias
    assert all(not k.startswith(split.head_name + ".") for k in split.feature_params())


def test_bad_batch_loses_nothing(tiny_regression):
    model, x, y = tiny_regression
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6)
    opt.run(x, y, max_iter=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = opt.state
    bad = x.clone()
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        opt.step(bad, y)
    assert opt.state is state
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    rec = opt.step(x, y)  # continues where it was
    assert rec.iteration == 4


def test_max_seconds_budget(tiny_regression):
    """A time budget ends the run after the step that spends it (here: the first one)."""
    model, x, y = tiny_regression
    hist = GNvpro(model).run(x, y, max_seconds=1e-9, max_iter=50)
    assert len(hist.records) == 1 and hist.termination.name == "MAX_SECONDS"


def test_a_collapsed_trust_region_ends_the_steps_without_an_error(tiny_regression):
    """Stepping on after convergence (the torch.optim habit): once rejections have shrunk Δ
    below min_radius, step() returns None and changes nothing (it went on shrinking Δ until
    the subproblem's secular equation underflowed, a ZeroDivisionError at Δ ~ 1e-156 on the
    peer benchmark's wine problem)."""
    from dataclasses import replace

    model, x, y = tiny_regression
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6, config=GNvproConfig.trust_region())
    assert opt.step(x, y) is not None
    opt.state = replace(opt.state, radius=1e-120)
    before = [p.detach().clone() for p in model.parameters()]
    assert opt.step(x, y) is None and opt.termination().name == "RADIUS"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
