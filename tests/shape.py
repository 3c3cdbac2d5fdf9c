"""The code's shape: long functions, large classes, import cycles and references that leave the repository.

`python -m tests.shape` prints the report; tests/unit/test_shape.py holds the limits.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bond", "actors", "learner", "reward_service", "cluster", "demo", "monitoring")
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 250
LINES_OF_CODE_BEFORE = 8458  # lines_of_code(source_files()) before the renovation, whose rule is: no growth
NOT_CODE = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)


@dataclass(frozen=True)
class Oversized:
    path: str
    name: str
    lines: int
    limit: int


def source_files(packages=PACKAGES) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def oversized(paths: list[Path]) -> list[Oversized]:
    """Functions over MAX_FUNCTION_LINES and classes over MAX_CLASS_LINES (decorators and docstrings count)."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            limit = {
                ast.FunctionDef: MAX_FUNCTION_LINES,
                ast.AsyncFunctionDef: MAX_FUNCTION_LINES,
                ast.ClassDef: MAX_CLASS_LINES,
            }.get(type(node))
            if limit is None:
                continue
            lines = node.end_lineno - min([node.lineno] + [d.lineno for d in node.decorator_list]) + 1
            if lines > limit:
                found.append(Oversized(str(path.relative_to(ROOT)), node.name, lines, limit))
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, at any depth in the file (lazy imports count: they still cycle)."""
    me, out = module_name(path), set()
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != me:
                out.add(name)
    return out


def import_cycles(paths: list[Path]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    known = {module_name(p) for p in paths}
    graph = {module_name(p): imports(p, known) for p in paths}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


# What a reader of the repository cannot follow: files beside it, the tracker's numbers, private Ray modules.
OUTSIDE = re.compile(r"\.\./shared|ALGORITHM\.md|STACK\.md|DESIGN\.md|REVIEW\.md|(?<![\w&])#\d{1,3}\b|\bissue \d+")
PRIVATE_RAY = re.compile(r"ray\._private|from ray\._private|ray/_private")


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    skip = (".png", ".jsonl", ".parquet", ".safetensors", ".bin", ".json")
    return [ROOT / p for p in out.split() if not p.endswith(skip) and (ROOT / p).is_file()]


def pointers_outside(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        if path.name in ("shape.py", "test_shape.py"):  # they name what they look for
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                yield f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}"


def private_ray(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE_RAY.search(line):
                yield f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}"


def code_lines(paths: list[Path]) -> int:
    return sum(1 for p in paths for line in p.read_text().splitlines() if line.strip())


def lines_of_code(paths: list[Path]) -> int:
    """Lines holding code: neither blank, nor only a comment, nor part of a docstring (a lone string statement)."""
    total = 0
    for path in paths:
        source = path.read_text()
        docstrings = {
            line
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for line in range(node.lineno, node.end_lineno + 1)
        }
        code = {
            line
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type not in NOT_CODE
            for line in range(tok.start[0], tok.end[0] + 1)
        }
        total += len(code - docstrings)
    return total


def main() -> int:
    code = source_files()
    big, cycles = oversized(code), import_cycles(code)
    outside, private = list(pointers_outside(tracked_text_files())), list(private_ray(code + source_files(("bench",))))
    print(f"non-test code: {len(code)} files, {code_lines(code)} non-blank lines (bench/ apart)")
    loc = lines_of_code(code)
    print(f"lines of code (no blanks, comments, docstrings): {loc} ({LINES_OF_CODE_BEFORE} before the renovation)")
    print(f"functions over {MAX_FUNCTION_LINES} lines, classes over {MAX_CLASS_LINES}: {len(big)}")
    for o in sorted(big, key=lambda o: -o.lines):
        print(f"  {o.path}::{o.name}  {o.lines} lines")
    print(f"import cycles: {len(cycles)}")
    for c in cycles:
        print("  " + " <-> ".join(c))
    print(f"private Ray imports: {len(private)}")
    for line in private:
        print("  " + line)
    print(f"pointers outside the repository: {len(outside)}")
    for line in outside:
        print("  " + line)
    return 1 if big or cycles or outside or private else 0


if __name__ == "__main__":
    sys.exit(main())
