"""The package layout docs/architecture.md describes: the library never imports the application,
`import gnvpro` loads neither scipy nor matplotlib, and no module is over 500 lines."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_the_library_never_imports_the_application():
    bad = {str(p.relative_to(SRC)): sorted(m for m in _imports(p)
                                           if m.split(".")[0] == "gnvpro_experiments")
           for p in (SRC / "gnvpro").rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def _loaded(module: str) -> list[str]:
    """The top-level packages among scipy, matplotlib, gnvpro_experiments that importing
    ``module`` loads (in a fresh interpreter)."""
    code = (f"import sys, {module}; print(','.join(sorted({{m.split('.')[0] for m in "
            "sys.modules} & {'scipy', 'matplotlib', 'gnvpro_experiments'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    return out.split(",") if out else []


def test_import_gnvpro_loads_neither_scipy_nor_matplotlib_nor_the_application():
    assert _loaded("gnvpro") == []


@pytest.mark.parametrize("module", ["gnvpro_experiments.cli", "gnvpro_experiments.runner"])
def test_the_application_loads_scipy_and_matplotlib_only_when_a_run_needs_them(module):
    assert _loaded(module) == ["gnvpro_experiments"]  # DCR (scipy) and the report load later


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long
