"""The package's imports point one way (README, "Code layout"): no circle, no arrow back up a stage or a floor.

Every `import dnavec_jax...` counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "dnavec_jax"
# Stages, lowest first: a module imports from its own stage or lower ones.
STAGES = (
    ("errors", "tokenization", "fields", "files", "tf_runtime", "kernels", "model"),
    ("data",),
    ("training",),
    ("export",),
    ("tools",),
    ("cli",),
)
# Floors inside tools/, lowest first: the settings, then the shared model loader, under the tools, the classifier
# commands' parts under the command, `dnavec predict` (a command on a classifier) on top.
TOOL_FLOORS = (
    ("tools.settings", "tools.malloc", "tools.classify.metrics"),
    ("tools.loaded_model", "tools.classify.settings"),
    ("tools.classify.tables", "tools.vectors", "tools.embed", "tools.tfidf",
     "tools.structure", "tools.classify.held_out"),
    ("tools.attention", "tools.classify.baseline", "tools.classify.classifier", "tools.classify.motif",
     "tools.classify.curves"),
    ("tools.classify.probes", "tools.classify.finetuning", "tools.classify.order"),
    ("tools.classify.report",),
    ("tools.classify.command",),
    ("tools.predict",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module (without the dnavec_jax. prefix) -> the package modules it imports."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py") if "export_files" not in path.parts}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dnavec_jax":
                base = node.module.removeprefix("dnavec_jax").lstrip(".")
                for alias in node.names:
                    full = f"{base}.{alias.name}".lstrip(".")
                    targets.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                targets |= {a.name.removeprefix("dnavec_jax.") for a in node.names if a.name.startswith("dnavec_jax.")}
        graph[name] = {target for target in targets if target and target != name}
    return graph


def rank(name: str, floors) -> int | None:
    for index, floor in enumerate(floors):
        if any(name == room or name.startswith(room + ".") for room in floor):
            return index
    return None


def test_imports_point_down_the_stages():
    wrong = [(source, target) for source, targets in import_graph().items() for target in targets
             if source and rank(target, STAGES) > rank(source, STAGES)]
    assert not wrong, wrong


def test_imports_point_down_the_floors_of_tools():
    graph = import_graph()
    tools = [name for name in graph if name.startswith("tools.") and name != "tools.classify"]
    unplaced = [name for name in tools if rank(name, TOOL_FLOORS) is None]
    assert not unplaced, f"add {unplaced} to TOOL_FLOORS"
    wrong = [(source, target) for source in tools for target in graph[source]
             if target.startswith("tools.") and rank(target, TOOL_FLOORS) >= rank(source, TOOL_FLOORS)
             and target != "tools.classify"]
    assert not wrong, wrong


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                raise AssertionError(" -> ".join([*path, name, target]))
            if target not in state:
                visit(target, [*path, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
