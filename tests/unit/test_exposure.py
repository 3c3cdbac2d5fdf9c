"""What the code base promises about exposure, checked on its source: nothing a user supplies is unpickled,
no model runs remote code, and docs/failures.md's bad-input table matches the tests' markers."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bond", "actors", "learner", "reward_service", "cluster", "bench")


def calls(name: str):
    """(file, line, call) of every call to `<something>.name(...)` or `name(...)` in the packages."""
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    func = node.func
                    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                    if called == name:
                        yield path.relative_to(ROOT), node.lineno, node


def test_torch_load_only_with_weights_only_and_no_pickle():
    loads = list(calls("load"))
    torch_loads = [(f, n, c) for f, n, c in loads if ast.unparse(c.func).startswith("torch.")]
    assert torch_loads, "expected the learner's optimizer/RNG torch.load calls"
    for file, line, call in torch_loads:
        kw = {k.arg: k.value for k in call.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, (
            f"{file}:{line}: torch.load without weights_only=True unpickles arbitrary objects"
        )
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert "import pickle" not in text and "cloudpickle" not in text, f"{path}: pickle"


def test_no_model_is_loaded_with_remote_code():
    for name in ("from_pretrained", "LLM", "load_dataset"):
        for file, line, call in calls(name):
            for k in call.keywords:
                assert not (
                    k.arg == "trust_remote_code" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                ), f"{file}:{line}"


def test_docs_bad_input_table_is_up_to_date():
    out = subprocess.run(
        [sys.executable, "-m", "tests.bad_input_table", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    page = (ROOT / "docs" / "failures.md").read_text().splitlines()
    rows = [line for line in page if line.startswith("| ") and "`tests/" in line]
    assert len(rows) >= 30
