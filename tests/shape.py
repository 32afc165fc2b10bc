"""The core's shape, measured (issue 22's bars): functions over 60 lines, classes over 15 methods,
modules over 400 lines, engine attributes found by `hasattr`/`getattr(engine, ...)` or attached with
`setattr`/assignment from outside, and the package's size. A report for `make shape`; with --check it
exits 1 while any bar is missed (for `make lint` once the redesign lands).

    python tests/shape.py [--check]
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "greedyscore"
MAX_FUNCTION, MAX_METHODS, MAX_MODULE = 60, 15, 400
# our engine probed (`hasattr(self.engine, ...)`) or given attributes after construction; in
# engines/lmdeploy.py a bare `engine` is lmdeploy's AsyncEngine, so only `self.engine` counts there
ENGINE_PROBE = re.compile(r"\b(hasattr|getattr|setattr)\((self\.)?engine\b|\bengine\.\w+\s*=[^=]")
THEIRS = {"engines/lmdeploy.py": re.compile(r"\b(hasattr|getattr|setattr)\(engine\b")}


def measure(package: Path = PACKAGE) -> tuple[list[str], int]:
    """-> (one line per missed bar, the package's lines)."""
    misses, total = [], 0
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n") + 1
        total += lines
        name = path.relative_to(package.parent)
        if lines > MAX_MODULE:
            misses.append(f"{name}: module of {lines} lines (> {MAX_MODULE})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION:
                    misses.append(f"{name}:{node.lineno}: function {node.name} of {size} lines (> {MAX_FUNCTION})")
            elif isinstance(node, ast.ClassDef):
                methods = sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in node.body)
                if methods > MAX_METHODS:
                    misses.append(f"{name}:{node.lineno}: class {node.name} with {methods} methods (> {MAX_METHODS})")
        theirs = THEIRS.get(str(path.relative_to(package)))
        for i, line in enumerate(text.splitlines(), 1):
            if ENGINE_PROBE.search(line) and not (theirs and theirs.search(line)):
                misses.append(f"{name}:{i}: engine attribute probed or attached: {line.strip()[:80]}")
    return misses, total


def main() -> None:
    misses, total = measure()
    print("\n".join(misses))
    print(f"shape: {len(misses)} bars missed; the package is {total:,} lines")
    if "--check" in sys.argv and misses:
        sys.exit(1)


if __name__ == "__main__":
    main()
