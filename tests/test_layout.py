"""The layout rules of ../shared/DESIGN.md, read from the source with `ast`: imports run one way
(`probes` and `saes` import from `interp`; `interp` imports neither) and no module imports itself
back through others (no import circle), counting imports inside functions and `TYPE_CHECKING` blocks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "probes", "saes")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports, anywhere in the file. `from pkg import x` counts as importing
    `pkg.x` when that is a module, else `pkg` itself."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                out.add(sub if sub in known else module)
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_core_imports_neither_saes_nor_probes():
    upward = sorted(f"{m} imports {dep}" for m, deps in _graph().items() if m.split(".")[0] == "interp"
                    for dep in deps if dep.split(".")[0] in ("saes", "probes"))
    assert not upward, upward


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The rules above are not vacuous: a planted circle and a planted upward import are found."""
    graph = _graph()
    assert len(graph) > 50 and sum(len(v) for v in graph.values()) > 100
    planted = {**graph, "interp.hooks": graph["interp.hooks"] | {"interp.readout"}}
    assert any("interp.hooks" in c and "interp.readout" in c for c in _cycles(planted))
    source = tmp_path / "interp" / "x.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from saes.io import load_sae\n")
    assert _imports("interp.x", source, set(graph)) == {"saes.io"}


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_are_small(package):
    """A module does one thing: none grows past ~400 lines (a few over, for long docstrings, is fine)."""
    big = {p.name: n for p in (ROOT / package).rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not big, big
