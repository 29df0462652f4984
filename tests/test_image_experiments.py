"""Indian Pines and image-classification experiments, and the stochastic GNvpro, on tiny budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gnvpro.batches import fixed_batches
from gnvpro_experiments import cli
from gnvpro_experiments.config import load_config
from gnvpro_experiments.problems.base import Split
from gnvpro_experiments.problems.images import FASHION_MNIST_DIR
from gnvpro_experiments.problems.paths import default_data_file
from gnvpro_experiments.train import train

HAVE_IP = default_data_file("indian_pines.npz").is_file()
HAVE_CIFAR = default_data_file("cifar10.npz").is_file()
HAVE_FMNIST = FASHION_MNIST_DIR.is_dir() and any(FASHION_MNIST_DIR.glob("train-images*"))


def _summary(out):
    return json.loads((out / "summary.json").read_text())


# ------------------------------------------------------------------------------------ configs
def test_configs_paper_settings():
    ip = load_config("indian-pines")
    assert ip.problem == "indian_pines" and ip.metric == "accuracy" and ip.levels == 3
    assert ip.model["width"] == 32 and ip.model["n_nodes"] == 4 and ip.model["T"] == 4.0
    g = ip.method_settings("gnvpro", 1)
    assert (g["descent"]["max_products"], g["descent"]["rtol"], g["max_work"]) == (50, 1e-2, 500)
    assert g["alpha_w"] == g["alpha_theta"] == 1e-3
    assert ip.method_settings("gnvpro", 3)["alpha_theta"] == pytest.approx(2.5e-4)
    a = ip.method_settings("adam", 1)
    assert ip.method_levels("adam") == 1 and ip.method_model("adam")["n_nodes"] == 16
    assert a["alpha_theta"] == pytest.approx(1e-3 / 8) and a["max_work"] == 3000
    assert a["batch_size"] == 32 and a["keep_best_val"]
    for name in ("cifar10", "fashion-mnist"):
        c = load_config(name)
        s = c.method_settings("gnvpro-stochastic", 1)
        assert {k: s[k] for k in ("n_batches", "iters_per_batch", "inner_max_iter", "epochs")
                } == {"n_batches": 4, "iters_per_batch": 3, "inner_max_iter": 400, "epochs": 2}
        assert (s["descent"]["max_products"], s["alpha_w"], s["alpha_theta"]) == (30, 5e-3, 1e-4)
        sgd = c.method_settings("sgd", 1)
        assert (sgd["lr"], sgd["batch_size"], sgd["alpha_w"], sgd["max_work"]) == (
            5e-3, 128, 1e-2, 400.0)
        e = c.with_epochs(3)
        assert e.method_settings("sgd", 1)["max_work"] == 6.0
        assert e.method_settings("gnvpro-stochastic", 1)["epochs"] == 3
        assert c.with_data(subset=500).data["subset"] == 500


@pytest.mark.skipif(not HAVE_IP, reason="indian_pines.npz not found")
def test_indian_pines_steps_follow_grid():
    from gnvpro_experiments.data import build_data, build_final_model, build_model
    from gnvpro_experiments.models.resnet import AntisymmetricResNet

    cfg = load_config("indian-pines")
    data = build_data(cfg, default_data_file("indian_pines.npz"), 0)
    m1 = build_model(cfg, data, 0)[0]
    m3 = build_final_model(cfg, data, 0, "gnvpro")[0]
    assert isinstance(m1, AntisymmetricResNet)
    assert (m1.n_nodes, m1.n_steps) == (4, 3)
    assert (m3.n_nodes, m3.n_steps) == (13, 12)
    assert build_model(cfg, data, 0, "adam")[0].n_nodes == 16


def test_missing_image_data_is_a_usage_error(tmp_path, capsys):
    rc = cli.main(["run", "fashion-mnist", "--data", str(tmp_path / "nope"), "--out",
                   str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Fashion-MNIST not found" in err and "\n" not in err
    rc = cli.main(["run", "indian-pines", "--subset", "5", "--out", str(tmp_path / "o")])
    assert rc == 2


# ------------------------------------------------------------------------ stochastic GNvpro
def _blobs(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]], dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    x = centres[y] + 0.9 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, y


def _blob_split() -> Split:
    xt, yt = _blobs(240)
    xv, yv = _blobs(60, seed=1)
    return Split(xt, yt, xv, yv, xv, yv, meta={"n_classes": 3})


@pytest.mark.parametrize("method", ["gnvpro-stochastic", "gn-stochastic"])
def test_trust_region_sub_batches_carry_radius_and_decrease_loss(monkeypatch, method):
    import gnvpro.methods.solver_method as module
    from gnvpro_experiments.models.mlp import mlp

    data = _blob_split()
    model = mlp(2, [6], 3, activation="tanh", generator=torch.Generator().manual_seed(0))
    seen = []  # (radius in, radius out, batch size) of every trust-region step
    real = module.outer_step  # GNvpro's and joint GN's one outer iteration

    def spy(problem, state, cfg):
        new, info = real(problem, state, cfg)
        seen.append((state.radius, new.radius, problem.C.shape[0]))
        return new, info

    monkeypatch.setattr(module, "outer_step", spy)
    settings = dict(loss="cross_entropy", alpha_w=1e-2, alpha_theta=1e-2,
                    descent={"max_products": 10}, epochs=2, n_batches=4, iters_per_batch=3)
    recs = train(method, model, data, settings)
    assert len(recs) == 1 + 2 * 4 * 3 and len(seen) == 24
    assert {b for _, _, b in seen} == {60}  # every step on a sub-batch of 240 / 4
    # the radius the first step on a new sub-batch starts from is the previous step's radius
    for k in range(3, 24, 3):
        assert seen[k][0] == seen[k - 1][1] == recs[k]["radius"]
        assert recs[k + 1]["batch"] != recs[k]["batch"]
    # work units are passes over the training set: each sub-batch's work scaled by 1/4
    wu = [r["work_units"] for r in recs]
    assert wu[0] == pytest.approx(2.0 / 4)
    assert all(b > a for a, b in zip(wu, wu[1:], strict=False))
    # within a sub-batch the trust-region objective never increases
    for k in range(0, 24, 3):
        losses = [recs[k + j]["loss"] for j in range(1, 4)]
        assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False))
    assert recs[-1]["metrics"]["val"]["accuracy"] > 0.85
    for r in recs:
        assert set(r["metrics"]) == {"train", "val"}
    # the model holds the last iterate: its predictions give the last batch's data loss
    xb, yb = fixed_batches(data.x_train, data.y_train, 4, 0)[3]
    with torch.no_grad():
        S = model(xb).double()
    data_loss = torch.nn.functional.cross_entropy(S, yb, reduction="sum") / len(xb)
    assert float(data_loss) == pytest.approx(recs[-1]["data_loss"], rel=1e-8)
    if method == "gnvpro-stochastic":  # the second visit to batch 0 starts lower
        assert recs[13]["batch"] == 0 and recs[13]["loss"] < recs[0]["loss"]


def test_stochastic_lbfgs_vpro_wolfe_steps_and_fresh_memory_per_batch(monkeypatch):
    from gnvpro.methods.lbfgs_vpro import LBFGSVarPro
    from gnvpro_experiments.models.mlp import mlp

    data = _blob_split()
    model = mlp(2, [6], 3, activation="tanh", generator=torch.Generator().manual_seed(0))
    starts = []  # number of curvature pairs dropped at each (re)start
    real_carry = LBFGSVarPro._carry

    def spy(self, old, fresh):
        new = real_carry(self, old, fresh)
        starts.append((len(old.pairs), fresh.pt.S.shape[0]))
        assert len(new.pairs) == 0
        return new

    monkeypatch.setattr(LBFGSVarPro, "_carry", spy)
    settings = dict(loss="cross_entropy", alpha_w=1e-2, alpha_theta=1e-2, epochs=2,
                    n_batches=3, iters_per_batch=5)
    recs = train("lbfgs-vpro-stochastic", model, data, settings)
    assert [n for _, n in starts] == [80] * 5  # one restart per new visit of a sub-batch
    assert all(k > 0 for k, _ in starts)  # pairs were there, and were dropped
    steps = recs[1:]
    assert len(steps) == 30
    assert all(r["wolfe"] and r["line_search_evals"] <= 30 for r in steps)
    for k in range(0, 30, 5):  # L-BFGS with a Wolfe line search descends on its batch
        losses = [steps[k + j]["loss"] for j in range(5)]
        assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    wu = [r["work_units"] for r in recs]
    assert wu[0] == pytest.approx(2.0 / 3)
    assert all(b > a for a, b in zip(wu, wu[1:], strict=False))
    assert recs[-1]["metrics"]["val"]["accuracy"] > 0.85


def test_sub_batch_settings_in_the_image_configs():
    for name in ("cifar10", "fashion-mnist"):
        c = load_config(name)
        g = c.method_settings("gn-stochastic", 1)
        assert g["alpha_w"] == 1e-2 and g["iters_per_batch"] == 3
        lbs = c.method_settings("lbfgs-vpro-stochastic", 1)
        assert lbs["iters_per_batch"] == 30 and lbs["search"]["max_evals"] == 30
        assert c.with_epochs(1).method_settings("gn-stochastic", 1)["epochs"] == 1
        scaled = c.method_settings("lbfgs-vpro-stochastic", 1, budget_scale=0.1)
        assert scaled["max_iter"] == round(2 * 4 * 30 * 0.1)


# --------------------------------------------------------------------------- CLI smoke runs
@pytest.mark.skipif(not HAVE_IP, reason="indian_pines.npz not found")
def test_indian_pines_cli_and_report(tmp_path):
    out = tmp_path / "ip"
    rc = cli.main(["run", "indian-pines", "--seeds", "0", "--methods", "gnvpro,adam",
                   "--budget-scale", "0.001", "--levels", "1", "--out", str(out),
                   "--no-progress"])
    assert rc == 0
    s = _summary(out)
    assert s["metric"] == "accuracy" and set(s["methods"]) == {"gnvpro", "adam"}
    for rows in s["methods"].values():
        assert 0.0 <= rows[0]["test"] <= 1.0
    g = [json.loads(x) for x in (out / "gnvpro/seed-0/history.jsonl").read_text().splitlines()]
    assert {r["level"] for r in g} == {1}
    assert cli.main(["report", str(out)]) == 0
    for f in ("segmentation.png", "confusion.png", "loss_vs_work.png", "report.md"):
        assert (out / f).stat().st_size > 0
    assert "segmentation.png" in (out / "report.md").read_text()


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST files not installed")
def test_fashion_mnist_cli_and_report(tmp_path):
    out = tmp_path / "fm"
    methods = "gnvpro-stochastic,sgd,gn-stochastic,lbfgs-vpro-stochastic"
    rc = cli.main(["run", "fashion-mnist", "--subset", "600", "--epochs", "1", "--methods",
                   methods, "--budget-scale", "0.1", "--seeds", "0",
                   "--out", str(out), "--no-progress"])
    assert rc == 0
    s = _summary(out)
    assert list(s["methods"]) == methods.split(",")
    for rows in s["methods"].values():
        assert 0.0 <= rows[0]["test"] <= 1.0 and rows[0]["work_units"] > 0
    info = json.loads((out / "gnvpro-stochastic/seed-0/config.json").read_text())
    assert info["split"]["n_train"] == 600 and info["experiment"]["data"]["subset"] == 600
    recs = (out / "gnvpro-stochastic/seed-0/history.jsonl").read_text().splitlines()
    assert len(recs) == 2  # record 0 + round(12 * 0.1) = 1 outer iteration
    assert cli.main(["report", str(out)]) == 0
    assert (out / "loss_vs_work.png").is_file()
    for f in ("confusion.png", "val_accuracy_vs_work.png", "val_accuracy_vs_seconds.png"):
        assert (out / f).stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "rows normalised): gnvpro-stochastic seed-0" in md and "T-shirt/top" in md


@pytest.mark.skipif(not HAVE_CIFAR, reason="cifar10.npz not found")
def test_cifar10_cli(tmp_path):
    out = tmp_path / "c"
    rc = cli.main(["run", "cifar10", "--subset", "400", "--epochs", "1", "--methods",
                   "gnvpro-stochastic", "--budget-scale", "0.1", "--out", str(out),
                   "--no-progress"])
    assert rc == 0
    row = _summary(out)["methods"]["gnvpro-stochastic"][0]
    assert 0.0 <= row["test"] <= 1.0 and row["work_units"] > 0



# ------------------------------------------------------------------- report: confusion matrix
def test_confusion_matrix_counts_and_normalised_rows():
    from gnvpro_experiments.report import confusion_matrix

    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 1, 0, 1, 1, 0, 2, 2, 1]
    counts = confusion_matrix(y_true, y_pred, 4, normalise=False)
    assert counts.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 1, 2, 0], [0, 0, 0, 0]]
    cm = confusion_matrix(np.array(y_true), torch.tensor(y_pred), 4)
    assert cm[:3].sum(axis=1) == pytest.approx([1.0, 1.0, 1.0], abs=1e-15)
    assert cm[3].tolist() == [0.0] * 4  # a class without samples: a zero row, no NaN
    assert np.diag(cm).tolist() == pytest.approx([2 / 3, 1.0, 0.5, 0.0])  # per-class accuracy
    assert cm[2].tolist() == pytest.approx([0.25, 0.25, 0.5, 0.0])
    with pytest.raises(ValueError, match="class indices must lie in 0..2"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="2 true labels but 1 predictions"):
        confusion_matrix([0, 1], [0], 3)


def test_predict_classes_in_batches_matches_one_pass():
    from gnvpro_experiments.models.mlp import mlp
    from gnvpro_experiments.report import predict_classes

    model = mlp(2, [6], 3, activation="tanh", dtype=torch.float32,
                generator=torch.Generator().manual_seed(0))
    x, _ = _blobs(23)  # float64 data, float32 model: every batch is cast to the model's dtype
    with torch.no_grad():
        whole = model(x.float()).argmax(dim=1).numpy()
    got = predict_classes(model, x, batch=5)
    assert got.dtype == np.int64 and got.tolist() == whole.tolist()
    assert predict_classes(model, x[:0]).shape == (0,)


def test_best_run_prefers_the_gnvpro_methods(tmp_path):
    from gnvpro_experiments.report import best_run

    def row(seed, val):
        return {"seed": seed, "val": val}

    runs = {"sgd": [row(0, 0.9)], "gnvpro-stochastic": [row(0, 0.6), row(1, float("nan"))],
            "gnvpro-tn-stochastic": [row(0, 0.7), row(1, 0.65)]}
    for m, rows in runs.items():
        for r in rows:
            (tmp_path / m / f"seed-{r['seed']}").mkdir(parents=True)
            (tmp_path / m / f"seed-{r['seed']}" / "model.pt").write_bytes(b"")
    summary = {"metric": "accuracy", "methods": runs}
    assert best_run(tmp_path, summary) == ("gnvpro-tn-stochastic",
                                           tmp_path / "gnvpro-tn-stochastic" / "seed-0")
    (tmp_path / "gnvpro-tn-stochastic" / "seed-0" / "model.pt").unlink()
    assert best_run(tmp_path, summary)[1] == tmp_path / "gnvpro-tn-stochastic" / "seed-1"
    low = {"metric": "rel_err", "methods": runs}  # smaller is better; NaN ranks last
    assert best_run(tmp_path, low)[1] == tmp_path / "gnvpro-stochastic" / "seed-0"
    for m in ("gnvpro-stochastic", "gnvpro-tn-stochastic"):  # no GNvpro model: any method
        for f in (tmp_path / m).glob("seed-*/model.pt"):
            f.unlink()
    assert best_run(tmp_path, summary) == ("sgd", tmp_path / "sgd" / "seed-0")
    (tmp_path / "sgd" / "seed-0" / "model.pt").unlink()
    assert best_run(tmp_path, summary) is None


def _tiny_cifar_batches(d, n_batch: int = 40, n_test: int = 30):
    """A cifar-10-batches-py directory of random images (5 x n_batch training, n_test test)."""
    import pickle

    rng = np.random.default_rng(0)
    d.mkdir()
    for name, n in [(f"data_batch_{i}", n_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 256, (n, 3 * 32 * 32)).astype(np.uint8)
        data[:, : 1024] //= 1 + labels[:, None].astype(np.uint8)  # a class-dependent red level
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels.tolist()}, f)
    return d


def test_tiny_image_run_report_has_confusion_and_accuracy_figures(tmp_path):
    """A CIFAR-10-shaped run on 160 random images: its report draws the test confusion matrix
    of the best-validation GNvpro run and validation accuracy against work units and seconds."""
    import re

    from gnvpro_experiments.config import CONFIG_DIR

    data = _tiny_cifar_batches(tmp_path / "cifar-10-batches-py")
    text = (CONFIG_DIR / "cifar10.toml").read_text()
    for old, new in (("n_train = 40000", "n_train = 160"), ("n_val = 10000", "n_val = 40")):
        assert old in text
        text = text.replace(old, new)
    toml = tmp_path / "cifar10_tiny.toml"
    toml.write_text(text)
    out = tmp_path / "c"
    rc = cli.main(["run", str(toml), "--data", str(data), "--epochs", "1", "--methods",
                   "sgd,gnvpro-stochastic", "--budget-scale", "0.1", "--seeds", "0,1",
                   "--out", str(out), "--no-progress"])
    assert rc == 0
    s = _summary(out)
    assert cli.main(["report", str(out)]) == 0
    for f in ("confusion.png", "val_accuracy_vs_work.png", "val_accuracy_vs_seconds.png"):
        assert (out / f).stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "![confusion](confusion.png)" in md and "![val_accuracy_vs_work]" in md
    rows = s["methods"]["gnvpro-stochastic"]
    best = max(rows, key=lambda r: r["val"])  # the first seed on ties
    m = re.search(r"Confusion matrix \(test set, 30 images, rows normalised\): "
                  r"gnvpro-stochastic seed-(\d) .*test accuracy ([0-9.]+); per class: "
                  r"airplane ([0-9.]+), automobile .* truck ([0-9.]+)\.", md)
    assert m is not None, md
    assert int(m.group(1)) == best["seed"]
    assert float(m.group(2)) == pytest.approx(best["test"], abs=5e-5)
    final = json.loads((out / f"gnvpro-stochastic/seed-{best['seed']}/final.json").read_text())
    if "correct" in final.get("test", {}):  # the diagonal is the per-class test accuracy
        t = final["test"]
        for i, g in ((0, 3), (9, 4)):
            want = t["correct"][i] / t["support"][i] if t["support"][i] else 0.0
            assert float(m.group(g)) == pytest.approx(want, abs=5e-4)


def test_jvp_mode_reaches_the_gauss_newton_methods(tmp_path):
    """--jvp-mode linearize: same iterates as jvp (same products, traced once per step)."""
    from gnvpro_experiments.config import ExperimentError
    from gnvpro_experiments.models.mlp import mlp

    c = load_config("fashion-mnist").with_jvp_mode("linearize")
    assert c.method_settings("gnvpro-stochastic", 1)["jvp_mode"] == "linearize"
    assert c.method_settings("gn-stochastic", 1)["jvp_mode"] == "linearize"
    assert "jvp_mode" not in c.method_settings("sgd", 1)
    with pytest.raises(ExperimentError, match="jvp-mode must be one of auto"):
        c.with_jvp_mode("forward")
    data = _blob_split()
    recs = {}
    for mode in ("jvp", "linearize", "double-backward"):
        for method in ("gnvpro-stochastic", "gn-stochastic"):
            model = mlp(2, [6], 3, activation="tanh", dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
            settings = dict(loss="cross_entropy", alpha_w=1e-2, alpha_theta=1e-2,
                            descent={"max_products": 10}, jvp_mode=mode, epochs=1,
                            n_batches=2, iters_per_batch=2)
            recs[mode, method] = [r["loss"] for r in train(method, model, data, settings)]
    for method in ("gnvpro-stochastic", "gn-stochastic"):
        assert recs["linearize", method] == pytest.approx(recs["jvp", method], rel=1e-10)
        assert recs["double-backward", method] == pytest.approx(recs["jvp", method], rel=1e-10)
