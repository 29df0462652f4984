"""Data the PyTorch way (issue 19, items 2 and 5): steps continue on the same data whatever
tensors hold it, a new batch inherits what ``carry`` names, and ``fit`` reads a re-iterable (a
DataLoader) afresh each epoch, one step per batch by default, with one work counter and
``val_every``."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gnvpro import (
    FirstOrder,
    FirstOrderConfig,
    GNvpro,
    GNvproConfig,
    JointGaussNewton,
    KeepBest,
    LBFGSVarPro,
    Termination,
    fit,
    fixed_batches,
)

METHODS = {
    "gnvpro-tn": lambda m: GNvpro(m, alpha_w=1e-6, alpha_theta=1e-6),
    "gnvpro-tr": lambda m: GNvpro(m, alpha_w=1e-6, alpha_theta=1e-6,
                                  config=GNvproConfig.trust_region()),
    "lbfgs-vpro": lambda m: LBFGSVarPro(m, alpha_w=1e-6, alpha_theta=1e-6),
    "joint-gn": lambda m: JointGaussNewton(m, alpha_w=1e-6, alpha_theta=1e-6),
    "first-order": lambda m: FirstOrder(m, alpha_w=1e-6, alpha_theta=1e-6,
                                        config=FirstOrderConfig(lr=0.05, batch_size=8)),
}


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _trajectory(make, model, batches, steps: int) -> tuple[list[float], list[torch.Tensor]]:
    """Losses after each of ``steps`` opt.step calls on batches() (called anew each step)."""
    opt = make(copy.deepcopy(model))
    losses = []
    for _ in range(steps):
        x, y = batches()
        opt.step(x, y)
        losses.append(opt.current().value)
    return losses, _weights(opt.model)


# ------------------------------------------------------------------ item 2: the same data
@pytest.mark.parametrize("name", list(METHODS))
def test_fresh_tensors_with_the_same_data_give_the_same_iterates(name, tiny_regression):
    model, x, y = tiny_regression
    same = _trajectory(METHODS[name], model, lambda: (x, y), 6)
    fresh = _trajectory(METHODS[name], model, lambda: (x.clone(), y.clone()), 6)
    assert same[0] == fresh[0]
    assert all(torch.equal(a, b) for a, b in zip(same[1], fresh[1], strict=True))


def test_lbfgs_keeps_its_curvature_pairs_on_fresh_tensors(tiny_regression):
    model, x, y = tiny_regression
    opt = LBFGSVarPro(model, alpha_w=1e-6, alpha_theta=1e-6)
    for _ in range(3):
        opt.step(x.clone(), y.clone())
    assert len(opt.state.pairs) == 3
    work = opt.own_work
    opt.step(x.clone(), y.clone())
    assert opt.state.pairs and opt.own_work - work < 10  # no re-evaluation of a new batch


def test_other_data_or_an_edited_batch_is_a_new_batch(tiny_regression):
    model, x, y = tiny_regression
    opt = LBFGSVarPro(model, alpha_w=1e-6, alpha_theta=1e-6)
    x = x.clone()
    opt.step(x, y)
    opt.step(x, y)
    assert opt.state.pairs
    assert opt._batch.same(x.clone(), y) and not opt._batch.same(x.float(), y)
    other = x.clone()
    other[3, 1] = torch.nextafter(other[3, 1], torch.tensor(math.inf, dtype=x.dtype))
    assert not opt._batch.same(other, y)  # one ulp apart
    x[0, 0] += 1.0  # an in-place edit of the remembered batch: its data is not the batch's
    assert not opt._batch.same(x, y)
    opt.step(x, y)
    assert len(opt.state.pairs) == 1  # a new batch: the pairs were dropped, one new pair


def test_weights_are_unchanged_until_someone_writes_or_replaces_one(tiny_regression):
    """The fast path of the per-step model check (its NaN/Inf scan is skipped while the
    weights are the ones the last step wrote): an in-place edit or a replaced parameter ends
    it, and then the scan names a NaN."""
    model, x, y = tiny_regression
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6)
    opt.step(x, y)
    assert opt._batch.weights_unchanged()
    first = next(model.parameters())
    with torch.no_grad():
        first[0, 0] = math.nan
    assert not opt._batch.weights_unchanged()
    with pytest.raises(ValueError, match="NaN/Inf"):
        opt.step(x, y)
    with torch.no_grad():
        first[0, 0] = 0.1
    opt.step(x, y)
    assert opt._batch.weights_unchanged()
    head = model[-1]
    head.bias = torch.nn.Parameter(torch.full_like(head.bias, math.nan))  # same version, new
    assert not opt._batch.weights_unchanged()
    with pytest.raises(ValueError, match="NaN/Inf"):
        opt.step(x, y)


def test_carry_is_an_explicit_parameter(tiny_regression):
    model, x, y = tiny_regression
    a, b = fixed_batches(x, y, 2, seed=0)
    assert GNvpro(copy.deepcopy(model)).carry == {"radius"}
    assert LBFGSVarPro(copy.deepcopy(model)).carry == frozenset()
    keep = LBFGSVarPro(copy.deepcopy(model), alpha_w=1e-6, carry=("pairs",))
    drop = LBFGSVarPro(copy.deepcopy(model), alpha_w=1e-6)
    for opt in (keep, drop):
        opt.step(*a)
        opt.step(*a)
        opt.step(*b)
    assert len(keep.state.pairs) == 3 and len(drop.state.pairs) == 1
    tr = GNvpro(copy.deepcopy(model), alpha_w=1e-6, config=GNvproConfig.trust_region(),
                carry=())
    kept = GNvpro(copy.deepcopy(model), alpha_w=1e-6, config=GNvproConfig.trust_region())
    for opt in (tr, kept):
        opt.step(*a)
        opt.set_batch(*b)
    assert tr.state.radius is None  # a new problem: the first radius is the first step's
    assert kept.state.radius > 0  # the paper's stochastic scheme
    with pytest.raises(ValueError, match=r"carry: unknown name\(s\) \['momentum'\]"):
        GNvpro(copy.deepcopy(model), carry=("momentum",))
    with pytest.raises(TypeError, match="carry must be a collection"):
        GNvpro(copy.deepcopy(model), carry="radius")


# ------------------------------------------------------------------ item 5: fit over data
class CountingLoader(DataLoader):
    """A DataLoader that counts its passes and remembers the first target of each batch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.passes, self.seen = 0, []

    def __iter__(self):
        self.passes += 1
        for xb, yb in super().__iter__():
            self.seen.append(float(yb[0, 0]))
            yield xb, yb


class Reiterable:
    """A re-iterable with a length and no __getitem__ (as a DataLoader)."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_fit_iterates_a_loader_afresh_each_epoch(tiny_regression):
    model, x, y = tiny_regression
    loader = CountingLoader(TensorDataset(x, y), batch_size=5)
    hist = fit(GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6), loader, epochs=3)
    assert loader.passes == 3 and len(loader.seen) == 12
    assert hist.termination is Termination.EPOCHS_DONE
    assert len(hist.records) == 12  # one step per batch by default, no budget needed
    assert [r.extra["batch"] for r in hist.records] == [0, 1, 2, 3] * 3
    assert hist.final.work_units == pytest.approx(hist.work)


def test_a_shuffling_loader_gives_a_new_order_each_epoch(tiny_regression):
    model, x, y = tiny_regression
    loader = CountingLoader(TensorDataset(x, y), batch_size=4, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
    fit(LBFGSVarPro(model, alpha_w=1e-6, alpha_theta=1e-6), loader, epochs=2)
    first, second = loader.seen[:5], loader.seen[5:]
    assert len(second) == 5 and first != second


def test_a_reiterable_gives_the_numbers_of_the_list(tiny_regression):
    model, x, y = tiny_regression
    batches = fixed_batches(x, y, 3, seed=1)
    runs = []
    for data in (batches, Reiterable(batches)):
        opt = GNvpro(copy.deepcopy(model), alpha_w=1e-6, alpha_theta=1e-6,
                     config=GNvproConfig.trust_region())
        hist = fit(opt, data, epochs=2, steps_per_batch=2, n_samples=len(x), record_start=True)
        runs.append([(r.loss, r.work_units, r.radius) for r in hist.records])
    assert runs[0] == runs[1] and len(runs[0]) == 1 + 2 * 3 * 2


def test_a_full_batch_loader_continues_the_same_problem(tiny_regression):
    model, x, y = tiny_regression
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))  # new tensors every pass
    a = LBFGSVarPro(copy.deepcopy(model), alpha_w=1e-6, alpha_theta=1e-6)
    b = LBFGSVarPro(copy.deepcopy(model), alpha_w=1e-6, alpha_theta=1e-6)
    ha = fit(a, loader, epochs=3, steps_per_batch=2)
    hb = fit(b, [(x, y)], max_iter=6)
    assert [r.loss for r in ha.records] == [r.loss for r in hb.records]
    assert a.work == b.work == hb.work


def test_several_batches_default_to_one_step_each(tiny_regression):
    model, x, y = tiny_regression
    batches = fixed_batches(x, y, 4, seed=0)
    hist = fit(LBFGSVarPro(model, alpha_w=1e-6, alpha_theta=1e-6), batches, epochs=2)
    assert hist.termination is Termination.EPOCHS_DONE and len(hist.records) == 8


def test_one_work_counter(tiny_regression):
    model, x, y = tiny_regression
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6)
    hist = fit(opt, fixed_batches(x, y, 4, seed=0), epochs=2, steps_per_batch=2)
    assert opt.work == hist.work == hist.final.work_units == hist.position.work
    assert opt.own_work > 3 * opt.work  # the method's own count: passes over 5-sample batches
    before = opt.work
    opt.step(x, y)  # outside fit: passes over the batch at hand
    assert opt.work > before
    full = GNvpro(copy.deepcopy(model), alpha_w=1e-6, alpha_theta=1e-6)
    h = fit(full, [(x, y)], max_iter=3)
    assert full.work == full.own_work == h.final.work_units


def test_val_every_validates_every_kth_record(tiny_regression):
    model, x, y = tiny_regression
    opt = FirstOrder(model, config=FirstOrderConfig(lr=0.3, batch_size=4))
    keep = KeepBest(model, classification=False)
    hist = fit(opt, [(x, y)], max_iter=7, val=(x[:8], y[:8]), val_every=3, record_start=True,
               callbacks=[keep])
    validated = [r.iteration for r in hist.records if "val" in r.metrics]
    assert validated == [0, 3, 6]
    assert all(r.extra.get("val_skipped") for r in hist.records if "val" not in r.metrics)
    assert keep.state is not None
    with pytest.raises(ValueError, match="KeepBest needs validation data"):
        fit(opt, [(x, y)], max_iter=2, callbacks=[keep])


def test_a_loader_batch_is_checked_when_drawn(tiny_regression):
    model, x, y = tiny_regression
    bad = x.clone()
    bad[7] = math.nan
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6)
    with pytest.raises(ValueError, match=r"batches\[1\] of epoch 1: x contains 3 NaN"):
        fit(opt, DataLoader(TensorDataset(bad, y), batch_size=5), epochs=2)
    assert opt.state.iteration == 1  # batch 0 was trained on, batch 1 never


def test_one_shot_iterators_are_still_refused(tiny_regression):
    model, x, y = tiny_regression
    opt = GNvpro(model)
    with pytest.raises(TypeError, match=r"\(generator\): pass list"):
        fit(opt, ((x, y) for _ in range(2)), max_iter=2)
    with pytest.raises(TypeError, match="with a length"):
        fit(opt, iter(DataLoader(TensorDataset(x, y), batch_size=5)), max_iter=2)
    assert opt.work == 0


def test_a_loader_schedule_resumes_from_a_position(tiny_regression):
    model, x, y = tiny_regression
    data = Reiterable(fixed_batches(x, y, 3, seed=2))
    make = METHODS["gnvpro-tr"]
    full = fit(make(copy.deepcopy(model)), data, epochs=2, steps_per_batch=2, n_samples=len(x))
    saved = {}

    def keep(hist):
        if len(hist.records) == 5:  # inside epoch 1, batch 2 (one step taken on it)
            saved.update(position=copy.deepcopy(hist.position), opt=opt.state_dict(),
                         model=copy.deepcopy(opt.model.state_dict()))

    opt = make(copy.deepcopy(model))
    fit(opt, data, epochs=2, steps_per_batch=2, n_samples=len(x), checkpoint=keep,
        checkpoint_every=0.0)
    assert saved["position"].batch == 2 and saved["position"].k == 1
    again = make(copy.deepcopy(model))
    again.model.load_state_dict(saved["model"])
    again.load_state_dict(saved["opt"])
    rest = fit(again, data, epochs=2, steps_per_batch=2, n_samples=len(x),
               start=saved["position"])
    assert [(r.loss, r.work_units) for r in rest.records] == [
        (r.loss, r.work_units) for r in full.records[5:]]


def test_the_gnvpro_logger_writes_one_info_line_per_record(caplog):
    """logging: one INFO line per record under the "gnvpro" logger, nothing when disabled."""
    import logging

    from gnvpro import GNvpro, fit

    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :1])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(),
                                torch.nn.Linear(6, 1)).double()
    with caplog.at_level(logging.INFO, logger="gnvpro"):
        hist = fit(GNvpro(model), [(x, y)], max_iter=3)
    lines = [r for r in caplog.records if r.name == "gnvpro"]
    assert len(lines) == len(hist.records) == 3
    assert "GNvpro iteration 1: objective" in lines[0].getMessage()
