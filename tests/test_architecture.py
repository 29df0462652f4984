"""The package layout docs/architecture.md describes: the library never imports the application,
`import gnvpro` loads neither scipy nor matplotlib, and no module is over 500 lines."""

import ast
import subprocess
import sys
from pathlib import Path

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


def test_import_gnvpro_loads_neither_scipy_nor_matplotlib():
    code = ("import sys, gnvpro; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'scipy', 'matplotlib', 'gnvpro_experiments'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long
