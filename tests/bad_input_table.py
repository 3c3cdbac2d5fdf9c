"""docs/failures.md's bad-input table, built from the tests' `@pytest.mark.bad_input(what, outcome)` markers.

    python -m tests.bad_input_table           # rewrite the table between the page's markers
    python -m tests.bad_input_table --check   # exit 1 if the page's table is out of date (a unit test runs this)

Collects (does not run) the test files that use the marker, so each row names a test that exists.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "failures.md"
BEGIN, END = "<!-- bad-input-table: begin (python -m tests.bad_input_table) -->", "<!-- bad-input-table: end -->"


class _Collector:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            for mark in item.iter_markers("bad_input"):
                what, outcome = mark.args
                test = f"{Path(item.location[0]).as_posix()}::{item.name}"
                self.rows.append((what, outcome, test))


def rows() -> list[tuple[str, str, str]]:
    files = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("test_*.py")
        if "pytest.mark.bad_input" in p.read_text()
    )
    collector = _Collector()
    code = pytest.main(
        ["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), *files], plugins=[collector]
    )
    if code not in (0, 5):
        raise SystemExit(f"collecting {files} failed (pytest exit {code})")
    return collector.rows


def table(found: list[tuple[str, str, str]]) -> str:
    lines = ["| # | bad input | what happens | test |", "| --- | --- | --- | --- |"]
    lines += [f"| {i} | {what} | {outcome} | `{test}` |" for i, (what, outcome, test) in enumerate(found, 1)]
    return "\n".join(lines)


def rewritten(page: str, block: str) -> str:
    head, sep, rest = page.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"{PAGE.relative_to(ROOT)} lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv: list[str]) -> int:
    if "--rows" in argv:  # the child process: print the table only
        print(table(rows()))
        return 0
    # collect in a child process: pytest's output and imports stay out of this one
    out = subprocess.run(
        [sys.executable, "-m", "tests.bad_input_table", "--rows"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    block = out[out.index("| # |") :].strip()
    current = PAGE.read_text()
    wanted = rewritten(current, block)
    if "--check" in argv:
        if wanted != current:
            print(f"{PAGE.relative_to(ROOT)}'s bad-input table is out of date: run `python -m tests.bad_input_table`")
            return 1
        return 0
    PAGE.write_text(wanted)
    print(f"{PAGE.relative_to(ROOT)}: {block.count(chr(10)) - 1} bad-input rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
