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


# ------------------------------------------------------------------------------ import graph
def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module under src/: dotted name -> (file, is a package's __init__)."""
    out = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if pkg else parts)] = (p, pkg)
    return out


def _run_time_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (never executed: with
    ``from __future__ import annotations`` those names only appear in annotations)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                   "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the modules under src/ it imports at run time, at module level and inside
    functions alike (a function-level import is still a dependency; putting one there only
    defers the cycle to run time); imports under ``if TYPE_CHECKING:`` are not counted.
    ``from pkg import name`` depends on ``pkg.name`` when that is a module, else on ``pkg``
    (its ``__init__``); relative imports are resolved. The implicit import of a module's parent
    packages is not an edge: every submodule has it."""
    mods = _modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rpartition(".")[0]
        deps: set[str | None] = set()
        for node in _run_time_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                deps |= {f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else known(mod)
                         for a in node.names}
        graph[name] = {d for d in deps if d is not None and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """(one cycle, all its modules) per strongly connected component of more than one module
    (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            comps.append(comp + [v])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in (set(c) for c in comps if len(c) > 1):
        start = min(comp)  # a shortest path back to start, inside the component
        paths, seen, cycle = {start: [start]}, {start}, None
        frontier = [start]
        while cycle is None and frontier:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w not in seen:
                        seen.add(w)
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append((cycle or sorted(comp), sorted(comp)))
    return cycles


def test_the_import_graph_finds_a_known_module_s_imports():
    g = import_graph()
    assert "gnvpro.validate" in g["gnvpro.solver"]
    assert "gnvpro.loop" in g["gnvpro"]
    assert "gnvpro_experiments.train" in g["gnvpro_experiments.demo"]


def test_the_cycle_finder_finds_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycles(g) == [(["a", "b", "c", "a"], ["a", "b", "c"])]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_src():
    g = import_graph()
    cycles = _cycles(g)
    text = "\n".join(f"{' -> '.join(c)}   (component of {len(m)}: {', '.join(m)})"
                     for c, m in cycles)
    assert not cycles, f"import cycles in src/:\n{text}"
