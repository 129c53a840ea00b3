"""Packages depend downwards only, and no module imports itself in a circle.

The order::

    protocol  <-  shared top-level modules (config, errors, web, runner, ...)
              <-  peer, streaming, tracker, ui   (siblings: never each other)
              <-  daemon  <-  cli, demo, __main__

Every ``import`` in every module under ``flashback/`` counts, wherever it
stands (inside a function or under ``TYPE_CHECKING`` too): a lazy import is
still a dependency, and a cycle through one comes back the day it moves.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import flashback

PACKAGE_DIR: Final = Path(flashback.__file__).parent
#: a unit's rank; a unit may import units of a lower rank, and itself
RANKS: Final = {
    "protocol": 0,
    "peer": 2,
    "streaming": 2,
    "tracker": 2,
    "ui": 2,
    "daemon": 3,
    "cli": 4,
    "demo": 4,
    "__main__": 5,  # the entry point: runs cli
}
SHARED_RANK: Final = 1  # every other top-level module: errors, config, web, ...
#: the shared modules may import one another (web -> httpserver); the cycle check guards them
MAY_IMPORT_SAME_RANK: Final = frozenset({SHARED_RANK})
#: sans-IO: protocol code reads bytes and numbers, never a socket or a clock of its own
PROTOCOL_FORBIDS: Final = frozenset({"trio", "quart", "quart_trio", "hypercorn", "httpx", "h11"})


def module_name(path: Path) -> str:
    parts = ("flashback", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The top-level unit: ``flashback.daemon.main`` -> ``daemon``, ``flashback`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rank_of(unit: str) -> int:
    return RANKS.get(unit, SHARED_RANK)


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in *path*."""
    module = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            yield node.lineno, base
            for alias in node.names:  # ``from flashback.daemon import context``
                yield node.lineno, f"{base}.{alias.name}"


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def internal_edges() -> dict[str, set[tuple[int, str]]]:
    known = modules()
    return {
        name: {(line, target) for line, target in imports_of(path) if target in known}
        for name, path in known.items()
    }


def test_the_walk_sees_the_tree() -> None:
    """Guard the guard: the scan must find the modules and imports we know are there."""
    edges = internal_edges()
    assert "flashback.daemon.main" in edges and "flashback.protocol.messages" in edges
    assert any(t == "flashback.ui.serve" for _, t in edges["flashback.daemon.main"])
    assert rank_of(unit_of("flashback.daemon.main")) > rank_of(unit_of("flashback.ui.serve"))


def test_no_package_imports_upward_or_sideways() -> None:
    upward = []
    for source, targets in internal_edges().items():
        source_unit = unit_of(source)
        for line, target in sorted(targets):
            target_unit = unit_of(target)
            if target_unit in ("", source_unit):  # ``flashback`` (__version__) or itself
                continue
            source_rank, target_rank = rank_of(source_unit), rank_of(target_unit)
            if target_rank < source_rank:
                continue
            if target_rank == source_rank and source_rank in MAY_IMPORT_SAME_RANK:
                continue
            upward.append(f"{modules()[source].relative_to(PACKAGE_DIR)}:{line} imports {target}")
    assert upward == [], "imports against the layering:\n" + "\n".join(upward)


def test_no_module_import_cycle() -> None:
    graph = {name: {target for _, target in targets} for name, targets in internal_edges().items()}
    graph = {name: targets - {name} for name, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_protocol_stays_sans_io() -> None:
    found = [
        f"{path.relative_to(PACKAGE_DIR)}:{line} imports {target}"
        for name, path in modules().items()
        if unit_of(name) == "protocol"
        for line, target in imports_of(path)
        if target.split(".")[0] in PROTOCOL_FORBIDS
    ]
    assert found == []
