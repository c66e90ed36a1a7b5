"""The layer rule of the README's architecture section, checked on the source: a module imports only
from its own layer or the layers below it, and the module import graph has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# bottom first; a package may import from its own layer and every layer before it
LAYERS = ["manifests", "media", "audio", "face", "models", "operators", "training", "pipelines", "jobs"]
RANK = {name: i for i, name in enumerate(LAYERS)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["facefab", *parts])


def _imports(path: Path) -> set[str]:
    """facefab modules `path` imports (module level and inside functions), relative ones resolved."""
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("facefab."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("facefab."):
                found.add(target)
                # `from facefab.pkg import module` names a module too
                found.update(f"{target}.{a.name}" for a in node.names)
    return found


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for layer in LAYERS for p in (REPO / layer).rglob("*.py")}


SOURCES = _sources()


def test_every_layer_folder_is_a_package_in_the_layer_list():
    assert all((REPO / layer / "__init__.py").exists() for layer in LAYERS)
    assert len(SOURCES) > 40


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_imports_only_from_its_layer_or_below(module):
    layer = module.split(".")[1]
    upward = sorted(t for t in _imports(SOURCES[module])
                    if t.split(".")[1] in RANK and RANK[t.split(".")[1]] > RANK[layer])
    assert not upward, f"{module} ({layer}) imports from a higher layer: {upward}"


def test_no_import_cycle():
    graph = {m: {t for t in _imports(p) if t in SOURCES and t != m} for m, p in SOURCES.items()}
    # a package's __init__ re-exporting its own modules is not a cycle with them
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_checker_sees_violations(tmp_path):
    """The walker resolves relative imports and function-level imports (so the rule can fail)."""
    pkg = tmp_path / "face"
    pkg.mkdir()
    src = pkg / "x.py"
    src.write_text("def f():\n    from ..operators.base import Operator\n    from .mesh import NUM\n")
    global REPO
    old, REPO = REPO, tmp_path
    try:
        assert _imports(src) == {"facefab.operators.base", "facefab.operators.base.Operator",
                                 "facefab.face.mesh", "facefab.face.mesh.NUM"}
    finally:
        REPO = old
