"""The layers of the code, read from the source (every import, at the top of a module or inside a
function): a service never imports another service, `shared/` never imports a service, and no
module imports itself back through others (no import circles). The CLI (`selfjudge/`) sits on top
and may import anything; recipes/ are outside the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "selfjudge": ROOT / "selfjudge",
    "selfjudge.shared": ROOT / "shared",
    "selfjudge.services": ROOT / "services",
}


def module_files() -> dict[str, Path]:
    """Every installed module by its dotted name (as pyproject's package-dir maps the folders)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            if package == "selfjudge" and rel.parts[0] in ("shared", "services"):
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            if "migrations" in parts:  # alembic's scripts
                continue
            modules[".".join([package, *parts])] = path
    return modules


MODULES = module_files()


def imports(name: str, path: Path) -> set[str]:
    """The modules of this package that `name` imports (a `from X import Y` names X.Y when that is a module)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def service_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["selfjudge", "services"] and len(parts) > 2 else None


def test_the_graph_is_read():
    # the reader must see the stage -> shared edges, or the tests below prove nothing
    assert "selfjudge.shared.loop" in GRAPH["selfjudge.services.evaluator.stage"]
    assert "selfjudge.services.evaluator.plan" in GRAPH["selfjudge.services.evaluator.stage"]
    assert len(MODULES) > 60


def test_services_never_import_each_other():
    crossing = sorted(
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        for t in targets
        if service_of(m) and service_of(t) and service_of(m) != service_of(t)
    )
    assert crossing == []


def test_shared_never_imports_a_service_or_the_cli():
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if m.startswith("selfjudge.shared")
        for t in targets
        if not t.startswith("selfjudge.shared")
    )
    assert upward == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (a list of modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circles():
    assert find_cycle(GRAPH) is None


@pytest.mark.parametrize(
    ("graph", "circle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
    ],
)
def test_find_cycle(graph, circle):
    assert (find_cycle(graph) is not None) == circle
