"""The house's rules that a linter does not check, read from the source (ast): no module outside fair/tasks/
branches on a task's name, and no two modules import each other, directly or round a longer circle."""

from __future__ import annotations

import ast
from pathlib import Path

from fair.tasks import registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fair", "gen", "train", "eval", "simulator", "serve", "cli", "bench")


def sources() -> dict[str, Path]:
    """Module name -> file, for every module of the packages (`gen/teachers/client.py` is gen.teachers.client)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def literals(node: ast.expr) -> list[str]:
    """The string constants a comparison tests against: "x", or those in ("x", "y") / ["x"] / {"x"}."""
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]


def names_a_task(node: ast.expr) -> bool:
    """`task.name`, `entry.task.name`, `record.task`, `task_name`: an expression that holds a task's name."""
    text = ast.unparse(node)
    return text.endswith(".name") and "task" in text or text.endswith(".task") or text in ("task", "task_name")


def task_name_branches(tree: ast.AST, task_names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(names_a_task(s) for s in sides) and any(n.lower() in task_names for s in sides for n in literals(s)):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Dict):  # {"strategyqa": ..., "logiqa": ...}.get(task.name): a branch by table
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            if keys and all(k.lower() in task_names for k in keys):
                found.append(f"line {node.lineno}: a table keyed by task names {keys}")
    return found


def test_no_module_outside_the_tasks_branches_on_a_task_name():
    task_names = set(registry())  # every name and alias, lower-cased
    found = []
    for module, path in sources().items():
        if module.startswith("fair.tasks"):
            continue
        found += [f"{path.relative_to(ROOT)} {hit}" for hit in task_name_branches(ast.parse(path.read_text()), task_names)]
    assert not found, "a task's quirk belongs in its own fair/tasks/<task>.py (a Task field):\n" + "\n".join(found)


def test_the_task_name_check_finds_what_it_forbids():
    names = {"gsm8k", "strategyqa", "logiqa"}
    source = ('if task.name == "gsm8k": pass\nif entry.task.name in ("strategyqa", "logiqa"): pass\n'
              'x = {"strategyqa": 1, "logiqa": 2}.get(task.name)\nif task.name == other: pass\n')
    assert [hit.split(":")[0] for hit in task_name_branches(ast.parse(source), names)] == ["line 1", "line 2", "line 3"]


def imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The project's modules this module imports anywhere in it: a lazy import inside a function counts, and so
    does a type-only one under `if TYPE_CHECKING:` (two modules that need each other's names are one room)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # `from a.b import c` imports the module a.b.c where there is one, else the name c from a.b
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != module}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = sources()
    known = set(modules)
    return {m: imported(ast.parse(p.read_text()), m, p.name == "__init__.py", known) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_between_modules():
    found = cycles(import_graph())
    assert not found, "modules that import each other (directly or round a circle):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
