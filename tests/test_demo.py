import torch

from gnvpro_experiments.demo import demo_problem, heat_family, run_demo


def test_heat_family_is_the_analytic_solution():
    y, u = heat_family(3, torch.Generator().manual_seed(0))
    assert y.shape == (3, 4) and u.shape == (3, 40)
    assert ((y[:, 0] >= 0.1) & (y[:, 0] <= 1)).all()
    assert torch.isfinite(u).all() and u.abs().max() <= 3


def test_demo_runs_and_writes_figure(tmp_path):
    threads = torch.get_num_threads()
    try:
        out = run_demo(tmp_path, progress=False, max_work=20)
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "convergence.png").stat().st_size > 10_000
    assert "gnvpro" in out["table"] and "adam" in out["table"]
    for run in out["runs"].values():
        assert run["records"][-1]["work_units"] >= 20
    assert len(demo_problem().x_train) == 500
