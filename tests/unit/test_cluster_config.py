"""The job config: YAML + --set overrides onto frozen dataclasses, errors naming the dotted field."""

import pytest

from bond.config import ConfigError
from cluster import config_loading
from cluster.job_config import JobConfig, Mode
from cluster.main import parse_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("algorithm:\n  beta: 0.3\n  prompts_per_step: 8\nrun:\n  steps: 5\n  mode: pipelined\n")
    job = parse_config(["--config", str(path), "--set", "algorithm.gamma=1", "--set", "run.max_staleness=2"])
    assert (job.algorithm.beta, job.algorithm.gamma, job.run.steps) == (0.3, 1.0, 5)
    assert job.run.mode is Mode.PIPELINED and job.run.max_staleness == 2
    again = config_loading.build(JobConfig, config_loading.to_dict(job))
    assert again == job


@pytest.mark.parametrize("assignment,field", [
    ("algorithm.beta=2", "algorithm.beta"),
    ("run.mode=async", "run.mode"),
    ("run.stepz=3", "run.stepz"),
    ("resources.learner_ranks=0", "resources.learner_ranks"),
    ("sampling.temperature=-1", "sampling.temperature"),
    ("prompts.format=csv", "prompts.format"),
    ("algorithm.prompts_per_step=7", "algorithm.prompts_per_step"),
    ("algorithm.algorithm=bond", "algorithm.algorithm"),
    ("algorithm.n=3", "algorithm.n"),
    ("sampling.temperature=0.7", "sampling.temperature"),
    ("sampling.top_p=0.9", "sampling.top_p"),
])
def test_bad_values_fail_naming_the_field(assignment, field):
    data = {"resources": {"learner_ranks": 2}} if "prompts_per_step=7" in assignment else {}
    config_loading.apply_override(data, assignment)
    with pytest.raises(ConfigError, match=f"^{field.replace('.', '[.]')}"):
        config_loading.build(JobConfig, data)


def test_pipelined_needs_staleness():
    with pytest.raises(ConfigError, match="run.max_staleness"):
        parse_config(["--set", "run.mode=pipelined", "--set", "run.max_staleness=0"])


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="no such file"):
        parse_config(["--config", "/nonexistent.yaml"])
    with pytest.raises(ConfigError, match="expected section.field=value"):
        parse_config(["--set", "algorithm.beta"])
