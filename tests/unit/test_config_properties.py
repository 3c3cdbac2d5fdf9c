"""Properties of the config loader under hostile input: whatever `--set` overrides and whatever config file
(random YAML, random JSON, random bytes) it is given, it returns a valid JobConfig (one that survives its own
config.yaml round trip) or raises ConfigError with a one-line message; never any other exception. Fixed
example budgets and derandomized draws keep these to seconds and reproducible in CI."""

import dataclasses
import json
import math
import os
import types
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bond.config import ConfigError
from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.main import main, parse_config

PROPERTY = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def dotted_fields(cls: type, prefix: str = "") -> list[str]:
    """Every settable leaf field of a config record, as the dotted name `--set` takes."""
    out = []
    for f in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls)[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if dataclasses.is_dataclass(kind):
            out += [prefix + f.name] + dotted_fields(kind, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


FIELDS = sorted(set(dotted_fields(JobConfig)) - set(JobConfig.NOT_SETTINGS))
KEYS = st.sampled_from(FIELDS) | st.sampled_from([*JobConfig.NOT_SETTINGS, "run.stepz", "run.steps.x", "", "."])
KEYS |= st.text(alphabet="abrun._ ", max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**30, max_value=10**40).map(lambda n: -n if n % 2 else n)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
RAW_VALUES = st.text(max_size=30) | st.sampled_from(
    [".nan", "-.inf", "1e400", "'", "[", "{a: 1}", "!!binary AAAA", "*x", "&a [*a]", "!!python/tuple [1]", "\x00"]
)
OVERRIDE_VALUES = VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).removesuffix("\n...\n")) | RAW_VALUES


def is_valid(job: JobConfig) -> bool:
    """A valid config: a JobConfig whose config.yaml (as the run writes it) loads back to the same config."""
    again = loading.build(JobConfig, yaml.safe_load(yaml.safe_dump(loading.to_dict(job), sort_keys=False)))
    return isinstance(job, JobConfig) and again == job


def load_or_refuse(argv: list[str]) -> None:
    try:
        job = parse_config(argv)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))
    else:
        assert is_valid(job)


@PROPERTY
@given(overrides=st.lists(st.tuples(KEYS, OVERRIDE_VALUES), min_size=1, max_size=4))
def test_random_overrides_give_a_config_or_a_config_error(overrides):
    load_or_refuse([f"--set={key}={value}" for key, value in overrides])


def numbers_in(value) -> list:
    return (
        [v for x in value for v in numbers_in(x)] if isinstance(value, list) else [value] if value is not None else []
    )


@PROPERTY
@given(key=st.sampled_from(FIELDS), value=st.floats(allow_nan=True, allow_infinity=True) | st.integers())
def test_valid_configs_hold_only_finite_numbers(key, value):
    try:
        job = parse_config([f"--set={key}={yaml.safe_dump(value).removesuffix(chr(10) + '...' + chr(10))}"])
    except ConfigError:
        return
    section, *rest = key.split(".")
    got = getattr(job, section)
    for name in rest:
        got = getattr(got, name)
    assert not (isinstance(got, float) and not math.isfinite(got)), (key, got)


DOCUMENTS = st.dictionaries(
    st.sampled_from(sorted({f.split(".")[0] for f in FIELDS})) | st.text(max_size=6),
    st.dictionaries(st.sampled_from([f.rsplit(".", 1)[-1] for f in FIELDS]) | st.text(max_size=6), VALUES, max_size=4)
    | VALUES,
    max_size=4,
) | VALUES.filter(lambda v: not isinstance(v, dict))


@PROPERTY
@given(document=DOCUMENTS, suffix=st.sampled_from([".yaml", ".json"]))
def test_random_config_documents_give_a_config_or_a_config_error(tmp_path, document, suffix):
    path = tmp_path / f"config{suffix}"
    path.write_text(yaml.safe_dump(document) if suffix == ".yaml" else json.dumps(document))
    load_or_refuse(["--config", str(path)])


@PROPERTY
@given(
    content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode), suffix=st.sampled_from([".yaml", ".json"])
)
def test_random_config_files_give_a_config_or_a_config_error(tmp_path, content, suffix):
    path = tmp_path / f"config{suffix}"
    path.write_bytes(content)
    load_or_refuse(["--config", str(path)])


# --- the cases the properties found, through the entry point ---------------------------------------------------


def refused(capsys, argv: list[str]) -> str:
    """`python -m cluster.main ...` exits 2 with one `config error: ...` line and no traceback."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("config error: ") and err.count("\n") == 1, err
    return err.removeprefix("config error: ")


@pytest.mark.bad_input("--config pointing at a binary (not UTF-8) file", "config error: config: ... is not a text file")
def test_binary_config_file(capsys, tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    assert refused(capsys, ["--config", str(path)]) == f"config: {path} is not a text file (not UTF-8)\n"


@pytest.mark.bad_input(
    "config file that is not valid YAML/JSON (unclosed quote, tab, NUL)", "config error: config: ... is not valid YAML"
)
def test_unparsable_config_file(capsys, tmp_path):
    for name, text in (("c.yaml", "run: {steps: 'two"), ("c.yaml", "run:\n\tsteps: 2"), ("c.json", '{"run": ')):
        (tmp_path / name).write_text(text)
        err = refused(capsys, ["--config", str(tmp_path / name)])
        assert err.startswith(f"config: {tmp_path / name} is not valid {'JSON' if 'json' in name else 'YAML'}: ")


@pytest.mark.bad_input(
    "`--set` value that is not valid YAML (`run.steps='3`)", "config error: --set ...: not valid YAML"
)
def test_unparsable_override_value(capsys):
    assert refused(capsys, ["--set", "run.steps='3"]).startswith('--set "run.steps=\'3": the value is not valid YAML: ')


@pytest.mark.bad_input("run.run_dir that is not a path (`run.run_dir=[1]`, a number)", "config error: run.run_dir")
def test_run_dir_not_a_path(capsys):
    assert refused(capsys, ["--set", "run.run_dir=[1]"]) == "run.run_dir: expected a path, got [1]\n"
    assert refused(capsys, ["--set", "run.run_dir=0.5"]) == "run.run_dir: expected a path, got 0.5\n"


@pytest.mark.bad_input(
    "run.run_dir the run cannot write (under /proc, under a regular file, a read-only directory)",
    "config error: run.run_dir: cannot write to ..., before Ray starts",
)
def test_unwritable_run_dir(capsys, tmp_path):
    import ray

    (tmp_path / "file").write_text("")
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    smoke = ["--config", "configs/smoke.yaml", "--set"]
    for run_dir, reason in (("/proc/jbond/run", "No such file"), (tmp_path / "file" / "run", "Not a directory")):
        err = refused(capsys, [*smoke, f"run.run_dir={run_dir}"])
        assert err.startswith(f"run.run_dir: cannot write to {run_dir}: {reason}"), err
    if os.geteuid() != 0:  # root writes anywhere
        assert "Permission denied" in refused(capsys, [*smoke, f"run.run_dir={read_only}/run"])
    assert not ray.is_initialized()
