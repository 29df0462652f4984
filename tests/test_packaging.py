"""Packaging: `pip install gnvpro` needs torch and numpy only; the application (its data,
figures and the `gnvpro` command) comes with the extra `gnvpro[experiments]`.

The library is checked in a fresh interpreter where an import hook makes scipy, matplotlib,
tqdm and gnvpro_experiments unimportable (no network, no second environment needed).
"""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRA = ("scipy", "matplotlib", "tqdm")

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def _run_without(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which the top-level packages ``blocked`` raise
    ModuleNotFoundError on import."""
    hook = textwrap.dedent(f"""
        import importlib.abc, sys
        class _Blocked(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {set(blocked)!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
                return None
        sys.meta_path.insert(0, _Blocked())
    """)
    return subprocess.run([sys.executable, "-c", hook + textwrap.dedent(code)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_the_library_fits_with_torch_and_numpy_only():
    r = _run_without(EXTRA + ("gnvpro_experiments",), """
        import torch, gnvpro, gnvpro.progress
        from torch import nn
        gnvpro.progress.on_terminal = lambda: True  # draw the bar: tqdm's plain stand-in
        torch.manual_seed(0)
        x = torch.randn(40, 3, dtype=torch.float64)
        y = torch.sin(x[:, :2])
        model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
        opt = gnvpro.GNvpro(model, loss="least_squares", alpha_w=1e-10, alpha_theta=1e-10)
        hist = gnvpro.fit(opt, [(x, y)], max_iter=3, progress=True)
        loss = [r.loss for r in hist.records]
        assert len(loss) >= 3 and loss[-1] < loss[0], loss
        bad = {m.split(".")[0] for m in sys.modules} & {"scipy", "matplotlib", "tqdm",
                                                        "gnvpro_experiments"}
        assert not bad, bad
        print("ok", loss[0], loss[-1])
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok"), r.stdout
    assert "3/3 it" in r.stderr, r.stderr  # the plain progress bar drew


def test_the_command_names_the_extra_in_one_line_when_it_is_missing():
    r = _run_without(("scipy",), """
        from gnvpro_experiments.cli import main
        raise SystemExit(main(["report", "nowhere"]))
    """)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "scipy" in lines[0] and "pip install 'gnvpro[experiments]'" in lines[0]


def test_the_distribution_requires_torch_and_numpy_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip()
             for d in project["dependencies"]]
    assert sorted(names) == ["numpy", "torch"]
    extra = " ".join(project["optional-dependencies"]["experiments"])
    assert all(m in extra for m in EXTRA)
    assert project["scripts"]["gnvpro"] == "gnvpro_experiments.cli:main"
