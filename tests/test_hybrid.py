"""gnvpro.descent.Hybrid: its choice between the L-BFGS direction and truncated Gauss-Newton
from measured rates −ΔΦ/Δcost (the state machine on given values and work counts, the
truncated-GN units priced at cg_price), its memo in the state dict, and training with it
(reproducibly)."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gnvpro import GNvpro, GNvproConfig, Hybrid, StrongWolfe
from gnvpro.state import SolverState, SwitchMemo
from gnvpro.validate import config_from_dict

F64 = torch.float64


class _Reducer:
    def __init__(self, agree: bool = True) -> None:
        self.agree, self.asked = agree, []

    def all(self, flag: bool) -> bool:
        self.asked.append(flag)
        return flag and self.agree


def _walk(descent: Hybrid, path: list[tuple[float, float]], reducer=None) -> list[SwitchMemo]:
    """The memos of the iterations that start at the (Φ, work units) of ``path`` in turn."""
    problem = SimpleNamespace(reducer=reducer or _Reducer())
    memo, out = None, []
    for value, work in path:
        state = SolverState(SimpleNamespace(value=value), torch.zeros(1), 1.0, work=work,
                            memo=memo)
        memo = descent._next(problem, state)
        out.append(memo)
    return out


def _runs(memos: list[SwitchMemo]) -> str:
    """The mode each iteration ran: c (truncated GN) or l (L-BFGS)."""
    other = {"cg": "l", "lbfgs": "c"}
    return "".join(other[m.mode] if m.phase == "probe" else m.mode[0] for m in memos)


def test_a_faster_probe_switches_the_mode():
    # cg at rate 1 for two iterations, an L-BFGS probe at rate 4 (0.25 units), the cg
    # iterations after it until 0.25 units have been spent (rate 2/3), then L-BFGS is the mode
    path = [(10, 0), (9, 1), (8, 2), (7, 2.25), (6.9, 2.35), (6.8, 2.55), (6.0, 2.6)]
    memos = _walk(Hybrid(probe_after=2, probe_share=0.0, cg_price=1.0), path)
    assert _runs(memos) == "cclccll"
    probe, after, decided = memos[3], memos[4], memos[5]
    assert probe.phase == "after" and probe.probe_rate == pytest.approx(4.0)
    assert probe.probe_work == pytest.approx(0.25) and probe.before_rate == pytest.approx(1.0)
    assert after.phase == "after" and len(after.marks) == 2
    assert decided.mode == "lbfgs" and decided.phase == "run" and decided.gap == 2
    assert decided.since == 0


def test_a_slower_probe_doubles_the_gap_and_no_decrease_probes_at_once():
    d = Hybrid(probe_after=2, probe_share=0.0, max_gap=3, cg_price=1.0)
    # the probe at rate 0.1 loses against √(1·1): cg stays, the gap doubles (capped at 3)
    path = [(10, 0), (9, 1), (8, 2), (7.9, 3), (6.9, 4), (5.9, 5), (4.9, 6), (3.9, 7)]
    memos = _walk(d, path)
    assert _runs(memos) == "cclccccl"
    assert memos[4].mode == "cg" and memos[4].gap == 3 and memos[7].phase == "probe"
    # an iteration of the mode without decrease: the other mode is probed at once
    memos = _walk(d, [(10, 0), (10, 1)])
    assert _runs(memos) == "cl"


# L-BFGS at 0.1 per unit; a truncated-GN probe of 10 units at 0.05 per unit loses
DEAR = [(10, 0), (9, 10), (8.5, 20), (7.5, 30), (6.5, 40), (5.5, 50), (4.5, 60), (3.5, 70)]


def test_probes_of_a_dear_mode_wait_for_a_multiple_of_its_work():
    d = Hybrid(probe_after=1, probe_share=4.0, start="lbfgs", max_products=2, cg_price=1.0)
    # the first probe comes after probe_after iterations; it costs 10 units and loses (L-BFGS
    # stays, gap 2 from 30), and the next is due once 4·10 more units have been spent
    memos = _walk(d, DEAR)
    assert _runs(memos) == "lclllllc"
    assert memos[2].probe_work == 10 and memos[3].gap == 2 and memos[3].mode == "lbfgs"
    assert memos[6].phase == "run" and memos[7].phase == "probe"


def test_truncated_gn_units_are_priced_at_cg_price():
    # cg at 1 per unit, then an L-BFGS probe at 1.2 per unit: ahead per unit (price 1: the
    # switch), behind per cost when a cg unit costs 2/3 of an L-BFGS one (1.2 < 1/(2/3) = 1.5);
    # the cg iterations after the probe then run until 1 L-BFGS unit's cost, 1.5 cg units
    path = [(10, 0), (9, 1), (8, 2), (6.8, 3), (5.8, 4), (4.8, 5)]
    assert _runs(_walk(Hybrid(probe_after=2, probe_share=0.0, cg_price=1.0), path)) == "cclcll"
    memos = _walk(Hybrid(probe_after=2, probe_share=0.0), path)
    assert _runs(memos) == "cclccc"
    assert memos[4].phase == "after" and memos[5].mode == "cg" and memos[5].gap == 4
    # the next truncated-GN probe after one of 10 units: due after 4·10·(2/3) ≈ 26.7 L-BFGS
    # units, not 40 (test_probes_of_a_dear_mode_wait_for_a_multiple_of_its_work)
    d = Hybrid(probe_after=1, probe_share=4.0, start="lbfgs", max_products=2)
    assert _runs(_walk(d, DEAR)) == "lcllllcl"
    with pytest.raises(ValueError, match="cg_price"):
        Hybrid(cg_price=0.0)


def test_the_switch_needs_every_rank():
    path = [(10, 0), (9, 1), (8, 2), (7, 2.25), (6.8, 2.55)]
    reducer = _Reducer(agree=False)
    memos = _walk(Hybrid(probe_after=2, probe_share=0.0, cg_price=1.0), path, reducer)
    assert reducer.asked == [True] and memos[-1].mode == "cg" and memos[-1].gap == 4


def test_the_memo_round_trips_and_a_bad_one_is_named():
    memo = SwitchMemo("cg", "after", ((1.0, 2.0), (0.5, 3.0)), 0.1, 2.0, math.nan, 3, 4, 1.5)
    d = memo.to_dict()
    back = SwitchMemo.from_dict(d)
    assert back.marks == memo.marks and back.mode == "cg" and math.isnan(back.before_rate)
    with pytest.raises(ValueError, match="'mode'"):
        SwitchMemo.from_dict({**d, "mode": "newton"})
    with pytest.raises(ValueError, match="marks"):
        SwitchMemo.from_dict({**d, "marks": []})
    with pytest.raises(TypeError, match="'gap'"):
        SwitchMemo.from_dict({**d, "gap": 1.5})
    with pytest.raises(ValueError, match="keys"):
        SwitchMemo.from_dict({"mode": "cg"})


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(80, 3, generator=g, dtype=F64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double(), x, y


def test_gnvpro_trains_with_it_and_its_state_dict_carries_the_memo():
    model, x, y = _problem()
    cfg = GNvproConfig(descent=Hybrid(probe_after=1, probe_share=0.0), search=StrongWolfe())
    opt = GNvpro(model, "cross_entropy", alpha_w=1e-3, config=cfg)
    hist = opt.run(x, y, max_iter=12)
    values = [r.loss for r in hist.records]
    assert values[-1] < 0.8 * values[0]
    assert {r.extra["descent"] for r in hist.records[1:]} == {"cg", "lbfgs"}  # both ran
    again = GNvpro(_problem()[0], "cross_entropy", alpha_w=1e-3, config=cfg)
    twin = again.run(x, y, max_iter=12)  # the choices follow Φ and work counts: the same run
    assert [(r.loss, r.extra["descent"]) for r in twin.records[1:]] == [
        (r.loss, r.extra["descent"]) for r in hist.records[1:]]
    sd = opt.state_dict()
    assert sd["memo"] == opt.state.memo.to_dict()
    other = GNvpro(_problem()[0], "cross_entropy", alpha_w=1e-3, config=cfg)
    other.load_state_dict(sd)
    assert other.state.memo == opt.state.memo
    with pytest.raises(ValueError, match="memo"):
        other.load_state_dict({**sd, "memo": {"mode": "cg"}})
    assert other.state.memo == opt.state.memo  # a refused dict changes nothing


def test_settings_round_trip():
    cfg = GNvproConfig(descent=Hybrid(max_products=4, start="lbfgs"), inner_forcing=1e-2)
    assert config_from_dict(GNvproConfig, cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="start"):
        Hybrid(start="newton")
