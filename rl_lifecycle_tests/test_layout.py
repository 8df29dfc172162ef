"""The layout's two boundaries, read from the source (imports inside functions count too):

- only `rl_lifecycle/orchestration/` imports `dagster` or a `dagster_*` package: the core is plain Python;
- no import cycle among `rl_lifecycle` modules, nor among its rooms (the packages and modules directly
  under it): a module that needs one above it shows a misplaced idea;
- the core never imports the shell or its callers (`orchestration`, `cli`, `bench`).

Each rule is also run against a small package written for the test, so a rule that cannot fail fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL = "orchestration"  # the one package of the shell
ABOVE_THE_CORE = ("orchestration", "cli", "bench")


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(root, path): path for path in sorted(root.rglob("*.py"))}


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, tuple[str, ...], int]]:
    """(module imported, names taken from it, line) for every import statement, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            found.append((base, tuple(alias.name for alias in node.names), node.lineno))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (`from pkg import sub` names the submodule)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names, _ in _imported(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            submodules = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
            if submodules:
                graph[name] |= submodules
            elif target in modules:
                graph[name].add(target)
    for edges in graph.values():
        edges.discard("")
    return {name: {t for t in edges if t != name} for name, edges in graph.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def room_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded onto rooms: `rl_lifecycle.features.store` belongs to `rl_lifecycle.features`."""
    def room(module: str) -> str:
        return ".".join(module.split(".")[:2])

    rooms: dict[str, set[str]] = {}
    for source, targets in graph.items():
        rooms.setdefault(room(source), set()).update(room(t) for t in targets if room(t) != room(source))
    return rooms


def core_imports_of_the_shell(graph: dict[str, set[str]]) -> list[str]:
    """`module -> module` for every import from a core module of orchestration, cli or bench."""
    def above(module: str) -> bool:
        return module.split(".")[1:2] in ([name] for name in ABOVE_THE_CORE)

    return sorted(f"{s} -> {t}" for s, targets in graph.items() if not above(s) for t in targets if above(t))


def dagster_imports_outside_shell(root: Path) -> list[str]:
    """`file:line: module` for every import of dagster or a dagster_* package outside the shell package."""
    offenders = []
    for name, path in _modules(root).items():
        if name.split(".")[1:2] == [SHELL]:
            continue
        for target, _, line in _imported(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            top = target.split(".")[0]
            if top == "dagster" or top.startswith("dagster_"):
                offenders.append(f"{path.relative_to(root.parent).as_posix()}:{line}: {target}")
    return offenders


def test_only_the_orchestration_package_imports_dagster():
    assert dagster_imports_outside_shell(REPO / "rl_lifecycle") == []


def test_no_import_cycle_among_rl_lifecycle_modules():
    assert import_cycles(import_graph(REPO / "rl_lifecycle")) == []


def test_no_import_cycle_among_the_rooms_and_the_core_stays_below_the_shell():
    graph = import_graph(REPO / "rl_lifecycle")
    assert import_cycles(room_graph(graph)) == []
    assert core_imports_of_the_shell(graph) == []


def test_the_import_graph_sees_every_module_and_deferred_imports():
    graph = import_graph(REPO / "rl_lifecycle")
    assert "rl_lifecycle.orchestration.definitions" in graph
    # a deferred import (inside a function) is an edge like any other
    assert "rl_lifecycle.models.service" in graph["rl_lifecycle.orchestration.assets.models"]


def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "rl_lifecycle"


def test_the_rules_catch_a_stray_dagster_import_and_a_circle_through_a_function(tmp_path):
    package = _write(tmp_path, {
        "rl_lifecycle/__init__.py": "",
        "rl_lifecycle/ops/__init__.py": "",
        "rl_lifecycle/ops/alerts.py": "from rl_lifecycle.ops.logs import log_event\n",
        "rl_lifecycle/ops/logs.py": "def log_event():\n    from rl_lifecycle.ops import alerts\n",
        "rl_lifecycle/windows.py": "def f():\n    import dagster_postgres.utils\n",
        "rl_lifecycle/markets.py": "from dagster import asset\n",
        "rl_lifecycle/orchestration/__init__.py": "",
        "rl_lifecycle/orchestration/jobs.py": "import dagster\nfrom rl_lifecycle import windows\n",
        "rl_lifecycle/orchestration/sensors.py": "from . import jobs\nfrom .jobs import x\n",
    })
    assert dagster_imports_outside_shell(package) == [
        "rl_lifecycle/markets.py:1: dagster", "rl_lifecycle/windows.py:2: dagster_postgres.utils",
    ]
    graph = import_graph(package)
    assert import_cycles(graph) == [["rl_lifecycle.ops.alerts", "rl_lifecycle.ops.logs"]]
    assert graph["rl_lifecycle.orchestration.jobs"] == {"rl_lifecycle.windows"}
    assert graph["rl_lifecycle.orchestration.sensors"] == {"rl_lifecycle.orchestration.jobs"}
    assert core_imports_of_the_shell(graph) == []


def test_the_rules_catch_a_circle_between_rooms_and_the_core_importing_the_shell(tmp_path):
    package = _write(tmp_path, {
        "rl_lifecycle/__init__.py": "",
        "rl_lifecycle/evaluation/__init__.py": "",
        "rl_lifecycle/evaluation/service.py": "from rl_lifecycle.promotion.audit import current_champion\n",
        "rl_lifecycle/promotion/__init__.py": "",
        "rl_lifecycle/promotion/audit.py": "",
        "rl_lifecycle/promotion/service.py": "def f():\n    from rl_lifecycle.evaluation.service import x\n",
        "rl_lifecycle/orchestration/__init__.py": "",
        "rl_lifecycle/orchestration/partitions.py": "",
        "rl_lifecycle/markets.py": "def f():\n    from rl_lifecycle.orchestration.partitions import key\n",
    })
    graph = import_graph(package)
    assert import_cycles(graph) == []  # no circle between modules ...
    assert import_cycles(room_graph(graph)) == [["rl_lifecycle.evaluation", "rl_lifecycle.promotion"]]  # ... but rooms
    assert core_imports_of_the_shell(graph) == ["rl_lifecycle.markets -> rl_lifecycle.orchestration.partitions"]
