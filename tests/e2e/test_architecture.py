"""The package's shape, kept true: each subpackage's map (its `__init__` docstring) names every
module it holds and says what it may import ("May import: ..."); every import points down those
declarations (a module may import its own subpackage and the ones its map names); the
declarations themselves have no circle, nor do the modules' imports (type-checking imports
counted); and ARCHITECTURE.md names every module, and no module that does not exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "kong_plugin_kcauth"
# The modules at the package's root: what Kong sees, and the refusals everything stands on.
ROOT_MAY_IMPORT = {"errors": set(), "handler": {"decision", "revocation", "config", "ops", "errors"},
                   "server": {"handler", "pluginserver", "decision", "config", "ops", "errors"}}


def modules() -> dict[str, Path]:
    """Every module by dotted name under the package ("decision.guard", "handler", "config")."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = modules()
SUBPACKAGES = sorted({name.split(".")[0] for name, path in MODULES.items() if path.name == "__init__.py" and name})


def imports(name: str) -> set[str]:
    """The package's modules `name` imports (relative imports; `from . import x` names x)."""
    path = MODULES[name]
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[:len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
            target = ".".join(base)
            for alias in node.names:
                sub = f"{target}.{alias.name}".strip(".")
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.startswith("kong_plugin_kcauth") for n in names), f"{name}: absolute self-import"
    return found - {name, ""}  # "": the package's own __init__, which holds the version only


def declared(subpackage: str) -> set[str]:
    """What a subpackage's map says it may import."""
    doc = ast.get_docstring(ast.parse(MODULES[subpackage].read_text())) or ""
    line = next((ln for ln in doc.splitlines() if ln.startswith("May import:")), None)
    assert line is not None, f"{subpackage}/__init__.py: no 'May import:' line in its map"
    return set(re.findall(r"`([a-z_]+)`", line))


def test_each_map_names_its_modules() -> None:
    for sub in SUBPACKAGES:
        doc = ast.get_docstring(ast.parse(MODULES[sub].read_text())) or ""
        own = {n.split(".")[-1] + ".py" for n in MODULES if n.startswith(sub + ".")}
        assert own - set(re.findall(r"`([a-z_]+\.py)`", doc)) == set(), f"{sub}: modules missing from its map"


def test_imports_point_down_the_declared_layers() -> None:
    allowed = {sub: declared(sub) for sub in SUBPACKAGES} | ROOT_MAY_IMPORT
    wrong = []
    for name in MODULES:
        if not name:
            continue
        top = name.split(".")[0]
        for target in imports(name):
            other = target.split(".")[0]
            if other != top and other not in allowed[top]:
                wrong.append(f"{name} -> {target}")
    assert wrong == [], "imports against the maps"


def test_no_circles_between_layers_nor_modules() -> None:
    layers = {sub: declared(sub) for sub in SUBPACKAGES} | ROOT_MAY_IMPORT
    assert _circle(layers) is None, f"the maps declare a circle: {_circle(layers)}"
    graph = {name: imports(name) for name in MODULES}
    assert _circle(graph) is None, f"modules import in a circle: {_circle(graph)}"


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_a_circle_is_found() -> None:
    """The circle finder itself: a graph with one, and one without."""
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_architecture_names_every_module_and_only_those() -> None:
    text = (REPO / "ARCHITECTURE.md").read_text()
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    named = {n for n in re.findall(r"`((?:[a-z_]+/)?[a-z_]+\.py)`", text) if not n.startswith("tests/")}
    assert files - named == set(), "modules missing from ARCHITECTURE.md (by their path in the package)"
    assert named - files == set(), "ARCHITECTURE.md names modules that do not exist"
