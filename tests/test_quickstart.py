"""examples/quickstart.py (a user's own nn.Module, a DataLoader, a checkpoint) runs, reaches a
small validation error, and imports nothing of the application."""

import ast
import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).parents[1] / "examples" / "quickstart.py"


def test_quickstart_imports_only_torch_and_gnvpro():
    tree = ast.parse(EXAMPLE.read_text())
    roots = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
             for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
             for a in (n.names if isinstance(n, ast.Import) else [n])}
    assert roots <= {"__future__", "sys", "tempfile", "pathlib", "torch", "gnvpro"}, roots


def test_quickstart_runs_and_resumes_from_its_checkpoint(tmp_path):
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rel = module.main(tmp_path)
    assert (tmp_path / "quickstart.pt").is_file()
    assert rel < 0.02, rel  # measured 6.8e-3
