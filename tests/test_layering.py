"""The package's layers import only downwards, and no modules import each other in a circle.

    foundation (errors, logs, config, sharding)
    protocol            <- the pure sans-IO core: foundation only
    runtime             <- protocol
    control             <- runtime, protocol (run control, watchdog, preemption)
    api                 <- control, runtime, protocol (and http, imported lazily when the API is on)
    checkpoint, data    <- their own layer, protocol's messages (checkpoint), sharding and the
                           dataset agreement rounds of protocol (data)
    elastic             <- api, runtime
    testing             <- protocol, checkpoint (the simulator drives the real core and committer)
    http                <- api, runtime, protocol, checkpoint, data
    cli                 <- http, checkpoint (``python -m dtruntime``, the ``dtruntime`` command)

A new subpackage must be placed in :data:`ALLOWED` before it can land.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dtruntime"
FOUNDATION = {"errors", "logs", "config", "sharding"}

# layer -> the layers (or "layer.module" for a single module) it may import, besides itself.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "logs": set(),
    "config": {"errors"},
    "sharding": {"errors"},
    "protocol": {"errors"},
    "runtime": {"protocol"} | FOUNDATION,
    "api": {"runtime", "protocol", "control"} | FOUNDATION,
    "control": {"runtime", "protocol"} | FOUNDATION,
    "checkpoint": {"protocol.messages"} | FOUNDATION,
    "data": {"protocol.takeover", "protocol.spec_check"} | FOUNDATION,
    "elastic": {"api", "runtime", "protocol"} | FOUNDATION,
    "testing": {"protocol", "checkpoint"},
    "http": {"api", "runtime", "protocol", "checkpoint", "data"} | FOUNDATION,
    "cli": {"http", "checkpoint"} | FOUNDATION,
    "__main__": {"cli"},  # python -m dtruntime
    "": {"api", "checkpoint", "data", "elastic", "protocol", "runtime"} | FOUNDATION,  # dtruntime/__init__.py
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_level_imports(path: Path, *, typing: bool = False) -> set[str]:
    """Absolute names of the dtruntime modules ``path`` imports at module level (not in a
    function): the imports that run when it is imported, plus those under
    ``if TYPE_CHECKING`` with ``typing=True`` (a circle of types is a circle all the same)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and not typing:
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + [s for h in getattr(node, "handlers", []) for s in h.body])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "dtruntime")
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                if target.split(".")[0] != "dtruntime":
                    continue
                for alias in node.names:  # `from . import sharding` imports a module
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if _exists(candidate) else target)

    visit(ast.parse(path.read_text()).body)
    return found


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative / "__init__.py").exists()


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = {module_name(p): module_level_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}
WITH_TYPES = {module_name(p): module_level_imports(p, typing=True) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_layer_is_placed():
    unplaced = sorted({layer_of(m) for m in MODULES} - set(ALLOWED))
    assert not unplaced, f"add {unplaced} to ALLOWED in {Path(__file__).name}"


def test_layers_import_only_downwards():
    wrong = []
    for module, imports in MODULES.items():
        layer = layer_of(module)
        for target in imports:
            target_layer = layer_of(target)
            single = ".".join(target.split(".")[1:3])
            if target_layer not in (layer, "") and target_layer not in ALLOWED[layer] and single not in ALLOWED[layer]:
                wrong.append(f"{module} imports {target}")
            if target == "dtruntime" and layer != "":
                wrong.append(f"{module} imports the package root")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = {m: {t for t in imports if t in WITH_TYPES and t != m} for m, imports in WITH_TYPES.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []
    circles: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not circles, "\n".join(circles)


def test_the_layering_check_sees_the_package():
    assert len(MODULES) > 40
    assert "dtruntime.protocol.messages" in MODULES["dtruntime.checkpoint.leader"]
