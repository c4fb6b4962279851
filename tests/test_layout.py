"""The package shows its plan: a few floors, each documented, imports only going down, no cycles."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "flairlab"
FLOORS = ["data", "explore", "models", "training", "maps", "runs"]  # bottom -> top
TOP_FILES = {"__init__.py", "cli.py"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor_of(module: str) -> int:
    """0-based floor of a flairlab module; the top files sit above every floor."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in FLOORS:
        return FLOORS.index(parts[1])
    return len(FLOORS)


def flairlab_imports(path: Path) -> set[str]:
    """Every flairlab module `path` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("flairlab.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "flairlab":  # `from flairlab.<floor> import <module>`
                found |= {f"flairlab.{a.name}" for a in node.names}
            elif node.module.startswith("flairlab."):
                sub = [f"{node.module}.{a.name}" for a in node.names]
                found |= {s for s in sub if (PKG.parent / s.replace(".", "/")).with_suffix(
                    ".py").is_file()} or {node.module}
    return found


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def test_few_entries_at_the_top() -> None:
    entries = sorted(p.name for p in PKG.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 10, entries
    assert set(FLOORS) <= set(entries) and set(entries) >= TOP_FILES
    loose = [e for e in entries if e.endswith(".py") and e not in TOP_FILES]
    assert not loose, f"modules outside the floors: {loose}"


@pytest.mark.parametrize("floor", FLOORS)
def test_every_floor_says_what_it_holds(floor: str) -> None:
    doc = ast.get_docstring(ast.parse((PKG / floor / "__init__.py").read_text(encoding="utf-8")))
    assert doc and "Imports:" in doc, f"flairlab/{floor}/__init__.py needs a docstring"


def test_imports_only_go_down_the_floors() -> None:
    upward = []
    for name, path in MODULES.items():
        for imported in flairlab_imports(path):
            if imported not in MODULES:
                upward.append(f"{name} imports unknown {imported}")
            elif floor_of(imported) > floor_of(name):
                upward.append(f"{name} (floor {floor_of(name)}) imports {imported} "
                              f"(floor {floor_of(imported)})")  # fmt: skip
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = {name: flairlab_imports(path) - {name} for name, path in MODULES.items()}
    graph = {k: {v for v in vs if v in MODULES and MODULES[v].name != "__init__.py"}
             for k, vs in graph.items()}  # fmt: skip
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
