"""`make lint`'s size rule: no Python file over 400 lines, no function over 60 (decorators included).

A reader should hold a file, and a function, in their head; past these sizes a file has two subjects and a
function two steps. Ruff has no such rule (PLR0915 counts statements, which a long call spread over many
lines escapes), hence these few lines. Usage: python tools/check_sizes.py [PATH ...] (default: the repo).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
SKIP = {".venv", ".git", ".cache", "data", "build"}  # .cache: the bench venvs (bench/bench_train.py)


def oversized(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    found = []
    if (n := len(source.splitlines())) > MAX_FILE_LINES:
        found.append(f"{path}: {n} lines (at most {MAX_FILE_LINES})")
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if (n := node.end_lineno - start + 1) > MAX_FUNCTION_LINES:
                found.append(f"{path}:{start}: function {node.name} is {n} lines (at most {MAX_FUNCTION_LINES})")
    return found


def main(paths: list[str]) -> int:
    roots = [Path(p) for p in paths] or [Path(".")]
    files = [f for root in roots for f in ([root] if root.is_file() else sorted(root.rglob("*.py")))
             if not SKIP & set(f.parts)]
    problems = [line for f in files for line in oversized(f)]
    print("\n".join(problems) or f"sizes: {len(files)} files within {MAX_FILE_LINES} lines, functions within "
          f"{MAX_FUNCTION_LINES}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
