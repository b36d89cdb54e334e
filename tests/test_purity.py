"""protocol/ and sharding.py stay pure: no IO, threads, clocks or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dtruntime"
PURE_FILES = sorted((PACKAGE / "protocol").glob("*.py")) + sorted(PACKAGE.glob("sharding.py"))
FORBIDDEN = {"zmq", "socket", "threading", "time", "fsspec", "asyncio", "os", "subprocess", "select", "multiprocessing"}


def imported_modules(tree: ast.AST) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], [alias.name for alias in node.names]))
    return found


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: p.name)
def test_pure_module_imports_nothing_impure(path):
    tree = ast.parse(path.read_text())
    for module, names in imported_modules(tree):
        assert module not in FORBIDDEN, f"{path.name} imports {module}"
        if module == "random":
            assert names in ([], ["Random"]), f"{path.name} imports global random functions {names}"


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: p.name)
def test_pure_module_uses_no_global_random_functions(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "random":
            assert node.attr == "Random", f"{path.name} calls random.{node.attr} (use the Random passed in)"


def test_pure_files_were_found():
    assert len(PURE_FILES) >= 8
