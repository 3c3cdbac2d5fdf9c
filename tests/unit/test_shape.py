"""The code's shape holds: no long functions or large classes, no import cycles, public Ray APIs only, and nothing
pointing outside the repository (tests/shape.py prints the same report: `make shape`)."""

from tests import shape


def test_no_function_over_60_lines_and_no_class_over_250():
    big = shape.oversized(shape.source_files())
    assert not big, "\n".join(f"{o.path}::{o.name} {o.lines} lines (limit {o.limit})" for o in big)


def test_no_import_cycles():
    assert shape.import_cycles(shape.source_files()) == []


def test_no_private_ray_api_outside_tests():
    code = shape.source_files() + shape.source_files(("bench",))
    assert list(shape.private_ray(code)) == []


def test_nothing_points_outside_the_repository():
    assert list(shape.pointers_outside(shape.tracked_text_files())) == []


def test_the_checker_finds_what_it_looks_for(tmp_path):
    """The checks can fail: a long function, a cycle and a pointer outside are each found."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n\n\ndef long():\n" + "    x = 1\n" * 70)
    (tmp_path / "pkg" / "b.py").write_text("import pkg.a\n# see ../shared/notes\n")
    root, shape.ROOT = shape.ROOT, tmp_path
    try:
        files = shape.source_files(("pkg",))
        assert [o.name for o in shape.oversized(files)] == ["long"]
        assert shape.import_cycles(files) == [["pkg.a", "pkg.b"]]
        assert len(list(shape.pointers_outside(files))) == 1
    finally:
        shape.ROOT = root
