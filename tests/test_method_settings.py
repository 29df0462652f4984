"""One config per method in the experiments: every field settable from TOML and from the command
line (--set), wrong keys and types refused at load time with the key named, older run
directories still readable."""

import json

import pytest

import gnvpro
from gnvpro import LBFGSVarProConfig
from gnvpro_experiments import cli, load_config
from gnvpro_experiments.config import ExperimentError, config_from_dict
from gnvpro_experiments.train import METHODS, config_keys, make_config


def test_every_config_field_is_a_toml_key():
    for name, spec in METHODS.items():
        fields = set(spec.config_type.__dataclass_fields__)
        # seed is the run's seed, threads the run's --threads, optimizer the method's name,
        # ADAM has no momentum
        unused = {"seed", "threads", "optimizer"} | ({"momentum", "nesterov"} if name == "adam"
                                                     else set())
        assert fields - unused <= config_keys(name), name
    assert {"jacobian", "inner_rtol", "inner_atol", "descent", "search"} <= config_keys("gnvpro")


def test_set_reaches_every_field_and_is_validated():
    cfg = load_config("cdr").with_settings([
        "gnvpro.jacobian=kaufman", "gnvpro.inner_rtol=1e-8", "gnvpro.search.min_radius=1e-12",
        "gnvpro.search.rule.eta_expand=0.8", "gnvpro.descent.max_products=7",
        "lbfgs-vpro.descent.memory=5", "adam.lr=1e-2"])
    g = make_config("gnvpro", cfg.method_settings("gnvpro", 1))
    assert (g.jacobian, g.inner_rtol, g.search.min_radius, g.search.rule.eta_expand) == (
        "kaufman", 1e-8, 1e-12, 0.8)
    assert g.descent == gnvpro.LanczosSubspace(max_products=7, rtol=1e-2)
    assert make_config("lbfgs-vpro", cfg.method_settings("lbfgs-vpro", 1)) == LBFGSVarProConfig(
        descent=gnvpro.LBFGSTwoLoop(memory=5))
    # another kind of descent and search: each with its own defaults
    tn = load_config("cdr").with_settings(["gnvpro.descent.kind=cg",
                                           "gnvpro.search.kind=strong_wolfe"])
    assert make_config("gnvpro", tn.method_settings("gnvpro", 1)).descent == (
        gnvpro.PreconditionedCG(max_products=10))
    assert cfg.method_settings("adam", 1)["lr"] == 1e-2
    for bad, msg in [
        ("gnvpro.jacobian=half", r"methods\.gnvpro\.jacobian: .*'full', 'kaufman', got 'half'"),
        ("gnvpro.descent.max_products=0", r"methods\.gnvpro\.descent: .*max_products must be >= 1"),
        ("gnvpro.descent.kind=cg", r"methods\.gnvpro\.descent: .*PreconditionedCG.* does not fit "
                                   r"the search TrustRegion"),
        ("gnvpro.turbo=1", r"unknown key\(s\) turbo in \[methods\.gnvpro\]"),
        ("adam.max_krylov=3", r"unknown key\(s\) max_krylov in \[methods\.adam\]"),
        ("lbfgs-vpro.jvp_mode=jvp", r"unknown key\(s\) jvp_mode in \[methods\.lbfgs-vpro\]"),
        ("gnvpro.search.rule.foo=1", r"rule has unknown setting\(s\) foo"),
        ("gnvpro.descent.kind=newton", r"descent\.kind must be one of 'lanczos', 'steihaug', 'cg'"),
        ("nope.x=1", r"method 'nope' is not configured"),
        ("gnvpro=3", r"expected METHOD\.KEY=VALUE"),
    ]:
        with pytest.raises(ExperimentError, match=msg):
            load_config("cdr").with_settings([bad])


def test_set_from_the_command_line(tmp_path, capsys):
    rc = cli.main(["run", "ellipse", "--methods", "gnvpro", "--set", "gnvpro.max_iter=2",
                   "--set", "gnvpro.descent.rtol=0.5", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    cfg = json.loads((tmp_path / "gnvpro" / "seed-0" / "config.json").read_text())
    assert cfg["levels"][0]["descent"] == {"kind": "lanczos", "max_products": 10, "rtol": 0.5}
    assert cfg["levels"][0]["max_iter"] == 2
    assert cli.main(["run", "ellipse", "--set", "gnvpro.descent.kind=newton", "--out",
                     str(tmp_path / "x")]) == 2
    assert "methods.gnvpro.descent" in capsys.readouterr().err


def test_sub_batch_keys_are_checked():
    doc = load_config("fashion-mnist").to_dict()
    doc["methods"]["gnvpro-stochastic"]["n_batches"] = 0
    with pytest.raises(ExperimentError, match=r"methods\.gnvpro-stochastic\.n_batches must be > 0"):
        config_from_dict(doc)


def test_configs_of_earlier_versions_still_load():
    doc = load_config("fashion-mnist").to_dict()
    lb = doc["methods"]["lbfgs-vpro-stochastic"]
    lb["lbfgs_memory"] = lb.pop("descent")["memory"]
    lb.pop("search")
    lb["extra"] = {"max_line_search": 30, **{k: lb.pop(k) for k in (
        "n_batches", "iters_per_batch", "inner_max_iter")}}
    gn = doc["methods"]["gnvpro-tn-stochastic"]  # the flat solver keys of earlier versions
    gn.update(subproblem="tn", max_krylov=gn.pop("descent")["max_products"], krylov_rtol=1e-2,
              tn_memory=10, radius_rule={"eta_expand": 0.75}, min_radius=1e-14)
    gn.pop("search")
    old = config_from_dict(doc)
    new = load_config("fashion-mnist")
    for m in ("lbfgs-vpro-stochastic", "gnvpro-tn-stochastic"):
        assert old.method_settings(m, 1) == new.method_settings(m, 1), m
    assert old.to_dict() == new.to_dict()  # a run directory of either compares equal


@pytest.mark.parametrize("make, text", [
    (lambda: gnvpro.GNvproConfig(threads=0), "threads"),
    (lambda: gnvpro.StrongWolfe(max_evals=0), "max_evals"),
    (lambda: gnvpro.LanczosSubspace(rtol=1.0), "rtol"),
    (lambda: gnvpro.GNvproConfig(jacobian="x"), "jacobian"),
    (lambda: gnvpro.JointGNConfig(jvp_mode="x"), "jvp_mode"),
    (lambda: gnvpro.FirstOrderConfig(inner_max_iter=0), "inner_max_iter"),
    (lambda: gnvpro.LBFGSVarProConfig(grad_atol=-1.0), "grad_atol"),
])
def test_every_config_field_declares_its_range(make, text):
    """Ranges and choices live on the config fields (validate.in_range / choices metadata)."""
    with pytest.raises((ValueError, TypeError), match=text):
        make()
