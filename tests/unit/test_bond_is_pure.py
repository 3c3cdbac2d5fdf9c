"""House rule 1: bond/ imports torch and the standard library only (no Ray, vLLM, DeepSpeed, I/O libraries)."""

import ast
import sys
from pathlib import Path

BOND = Path(__file__).resolve().parents[2] / "bond"
ALLOWED = {"torch", "bond", "__future__"} | set(sys.stdlib_module_names)
NO_IO = {"os", "io", "pathlib", "socket", "subprocess", "shutil", "json", "pickle", "urllib", "http"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_bond_imports_only_torch_and_stdlib():
    files = sorted(BOND.glob("**/*.py"))
    assert files
    for path in files:
        roots = imported_roots(path)
        assert roots <= ALLOWED, f"{path.name} imports {sorted(roots - ALLOWED)}"
        assert not roots & NO_IO, f"{path.name} does I/O through {sorted(roots & NO_IO)}"
