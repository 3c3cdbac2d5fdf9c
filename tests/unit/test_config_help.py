"""`--help` documents every config field (generated from the dataclasses); `--print-config` shows the resolved one."""

import dataclasses
import typing

import pytest
import yaml

from cluster.config import helptext, loading
from cluster.config.job import JobConfig
from cluster.main import main, parse_config


def leaf_fields(cls, prefix=""):
    """Every dotted leaf field, walked independently of config_help (nested and optional sections included)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        inner = [a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)]
        nested = kind if dataclasses.is_dataclass(kind) else (inner[0] if inner else None)
        if nested is None:
            yield prefix + f.name, kind
        else:
            yield from leaf_fields(nested, prefix + f.name + ".")


def test_help_names_every_field_with_type_default_and_doc(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    fields = list(leaf_fields(JobConfig))
    assert len(fields) > 80  # every section, not the three CLI flags
    entries: dict[str, list[str]] = {}  # "    name: type = default" then "        doc" lines
    for line in text.splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            entries[line.strip().split(": ")[0]] = [line.strip()]
        elif line.startswith("        ") and entries:
            entries[list(entries)[-1]].append(line.strip())
    assert {name for name, _ in fields} <= set(entries), sorted({n for n, _ in fields} - set(entries))
    for name, kind in fields:
        head, *doc = entries[name]
        assert " = " in head and helptext.type_name(kind) in head, head
        assert " ".join(doc).strip(), f"{name} has no doc: write a docstring under the field"
    assert "algorithm.beta: float = 0.5" in text
    assert "reward.path_or_name: str = artifacts/tiny/reward" in text  # JobConfig's default, not the class's
    assert "run.mode: {sync,pipelined,auto} = auto" in text
    assert "pipelined: actors sample step t+1" in text  # enum values are explained by their comments


def test_field_docs_are_read_from_the_source():
    from bond.config import BondConfig

    docs = helptext.field_docs(BondConfig)
    assert docs["eta"].startswith("EMA rate of the anchor")
    assert "\n" not in docs["beta"]


def test_print_config_prints_the_resolved_yaml_and_exits_0(capsys, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("run:\n  steps: 7\n")
    main(["--config", str(path), "--set", "algorithm.beta=0.25", "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["run"]["steps"] == 7 and printed["algorithm"]["beta"] == 0.25
    assert printed["eval"]["every_steps"] == 0 and printed["learner"]["zero_stage"] == 3  # defaults shown too
    assert loading.build(JobConfig, printed) == parse_config(["--config", str(path), "--set", "algorithm.beta=0.25"])


def test_bad_value_exits_2_naming_the_field(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--set", "eval.holdout_fraction=1.5", "--print-config"])
    assert exit_.value.code == 2
    assert "config error: eval.holdout_fraction: must be in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides,field",
    [
        (["eval.every_steps=10"], "eval.every_steps"),  # evaluation without held-out prompts
        (["eval.every_steps=10", "eval.holdout_fraction=0.2", "eval.prompts.path=x.jsonl"], "eval.holdout_fraction"),
        (["eval.greedy=false", "eval.sampled=false"], "eval.greedy"),
        (["run.keep_checkpoints=-1"], "run.keep_checkpoints"),
        (["run.export_every=-5"], "run.export_every"),
    ],
)
def test_eval_and_run_fields_are_validated(overrides, field):
    from bond.config import ConfigError

    args = [a for o in overrides for a in ("--set", o)]
    with pytest.raises(ConfigError, match=f"^{field.replace('.', '[.]')}"):
        parse_config(args)


def test_wandb_project_without_wandb_is_a_config_error():
    import importlib.util

    from bond.config import ConfigError

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError, match="^run.wandb_project: .*not installed"):
        parse_config(["--set", "run.wandb_project=jbond"])


def test_help_says_which_record_fields_are_not_settings(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    fields = {name for name, _ in leaf_fields(JobConfig)}
    assert {"learner.seed", "models.build_tiny"} == set(JobConfig.NOT_SETTINGS) - fields  # removed: the loader says why
    for name in set(JobConfig.NOT_SETTINGS) & fields:
        entry = text.split(f" {name}: ", 1)[1][:120]  # "type = default (not a setting) why ..."
        assert "(not a setting)" in entry.split(" = ", 1)[1][:40], entry
    assert "sampling.seed: int | None = null (not a setting) derived from run.seed and the step" in text
    assert "sampling.max_new_tokens: int = 32 Most tokens generated" in text  # a setting keeps its doc


def test_jbond_console_script_is_the_module_entry_point(capsys, monkeypatch):
    """pyproject's `jbond` script calls cluster.main:main with no arguments, which reads sys.argv as
    `python -m cluster.main` does."""
    import importlib
    import sys
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    module, _, name = pyproject["project"]["scripts"]["jbond"].partition(":")
    entry = getattr(importlib.import_module(module), name)
    assert entry is main
    monkeypatch.setattr(sys, "argv", ["jbond", "--set", "run.steps=3", "--print-config"])
    entry()
    assert yaml.safe_load(capsys.readouterr().out)["run"]["steps"] == 3
