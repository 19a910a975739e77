"""The package's shape: no import cycle among raysemi's modules, counting the imports inside functions
too (a cycle kept alive by a late import is still a cycle)."""
import ast
from pathlib import Path

import raysemi

PACKAGE = Path(raysemi.__file__).parent


def module_imports(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the raysemi modules it imports anywhere in its file (`from raysemi.x import y` counts
    as raysemi.x, or as raysemi.x.y when that is a module)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {t for t in [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if t in names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in names}
        graph[name] = found - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None (depth-first search, colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_raysemi_has_no_import_cycle():
    graph = module_imports()
    assert {"raysemi.pseudo.driver", "raysemi.data.items", "raysemi.ray_start", "raysemi.train.loop"} <= set(graph)
    assert "raysemi.pseudo.table" in graph["raysemi.data.pseudo_stream"]  # the edges are real
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_readers_of_a_table_do_not_pull_in_training_or_ray():
    """Students read tables through pseudo.table: it must stay plain pyarrow (no Train launcher, no Ray)."""
    graph = module_imports()
    seen, todo = set(), ["raysemi.pseudo.table"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += graph[name]
    assert not {"raysemi.train.ray_fit", "raysemi.train.loop", "raysemi.ray_start", "raysemi.pseudo.driver"} & seen, seen


def test_reading_a_table_or_an_item_imports_neither_ray_nor_torch():
    import subprocess
    import sys

    code = ("import sys, raysemi.pseudo.table, raysemi.data.items, raysemi.data.splits; "
            "print(sorted(m for m in ('ray', 'torch', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
