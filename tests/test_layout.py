"""The package keeps the shape its rooms' docstrings state: who may import whom, one door per
third-party library, no import cycle, small modules and functions."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = REPO / "envbuild"
#: Rooms are the subpackages; these top-level modules are rooms of their own.
STANDALONE = ("gpucheck", "dask")
BASE = ("errors", "__init__", "__main__")
#: Third-party libraries and the only modules (or rooms) that may import them.
DOORS = {
    "uv": ("lock/pypi.py",),
    "rattler": ("lock/conda.py",),
    "conda_lock": ("lock/condalock.py",),
    "docker": ("image/engine.py",),
    "typer": ("cli/",),
    "click": ("cli/",),
    "pydantic": ("spec/",),
    "pynvml": ("gpucheck/nvml.py",),
    "distributed": ("dask.py",),
    "dask": ("dask.py",),
}
LONGEST_MODULE = 500
LONGEST_FUNCTION = 80


def modules() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "testing" not in path.relative_to(PACKAGE).parts:
            yield path


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports (at the top or inside a function), with its line."""
    tree = ast.parse(path.read_text())
    package = (
        module_name(path)
        if path.name == "__init__.py"
        else module_name(path)[: module_name(path).rfind(".")]
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:  # `from envbuild.lock import conda` imports a module
                yield f"{target}.{alias.name}", node.lineno


def room_of(name: str) -> str | None:
    """``envbuild.lock.resolve`` -> ``lock``; None outside envbuild."""
    parts = name.split(".")
    if parts[0] != "envbuild":
        return None
    return parts[1] if len(parts) > 1 and not parts[1].startswith("__") else "__init__"


def declared_rules() -> dict[str, set[str]]:
    """Room -> the rooms its docstring says it may import (``May import: a, b``)."""
    rules: dict[str, set[str]] = {}
    for init in [*sorted(PACKAGE.glob("*/__init__.py")), PACKAGE / "dask.py"]:
        room = init.parent.name if init.name == "__init__.py" else init.stem
        if room == "testing":
            continue
        docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
        match = re.search(r"^May import: (.*)$", docstring, re.M)
        assert match, f"{init.relative_to(REPO)}: its docstring must say what it may import"
        allowed = match.group(1).strip()
        rules[room] = set() if allowed.startswith("(") else {r.strip() for r in allowed.split(",")}
    return rules


def test_every_room_states_its_rules_and_keeps_them() -> None:
    rules = declared_rules()
    assert set(rules) >= {"spec", "lock", "env", "image", "cluster", "cli", "files", "gpucheck"}
    broken = []
    for path in modules():
        here = room_of(module_name(path))
        if here in BASE:
            continue
        assert here in rules, f"{path.relative_to(REPO)} is in no room with stated rules"
        for name, line in imports(path):
            there = room_of(name)
            if there is None or there == here or (there in BASE and there != "__init__"):
                continue
            if there == "__init__" and here not in STANDALONE:
                continue  # `from envbuild import __version__`
            if there not in rules[here]:
                broken.append(f"{path.relative_to(REPO)}:{line} ({here}) imports {name}")
    assert broken == []


def test_the_standalone_runtime_files_import_nothing_of_envbuild() -> None:
    for path in modules():
        if room_of(module_name(path)) not in STANDALONE:
            continue
        outside = [
            f"{path.relative_to(REPO)}:{line} {name}"
            for name, line in imports(path)
            if name.startswith("envbuild") and room_of(name) != room_of(module_name(path))
        ]
        assert outside == []


def test_each_third_party_library_has_one_door() -> None:
    strays = []
    for path in modules():
        relative = path.relative_to(PACKAGE).as_posix()
        for name, line in imports(path):
            top = name.split(".")[0]
            doors = DOORS.get(top)
            if doors and not any(relative.startswith(d) for d in doors):
                strays.append(f"{relative}:{line} imports {name}")
    assert strays == []


def test_no_import_cycles() -> None:
    names = {module_name(p): p for p in modules()}
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        for target, _ in imports(path):
            # the deepest module of ours the import names (`envbuild.lock` is the package)
            while target and target not in names:
                target = target.rpartition(".")[0]
            # a module importing its own package, or a package its children, is no cycle
            related = name.startswith(target + ".") or target.startswith(name + ".")
            if target and target != name and not related:
                graph[name].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: p.relative_to(REPO).as_posix())
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) < LONGEST_MODULE, "split this module"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            why = "Long because" in (ast.get_docstring(node) or "")
            assert length <= LONGEST_FUNCTION or why, (
                f"{node.name} is {length} lines: split it, or say why in its docstring "
                "('Long because ...')"
            )
