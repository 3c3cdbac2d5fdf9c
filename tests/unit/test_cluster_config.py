"""The job config: YAML + --set overrides onto frozen dataclasses, errors naming the dotted field."""

import pytest

from bond.config import ConfigError
from cluster.config import loading
from cluster.config.job import JobConfig, Mode
from cluster.main import parse_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("algorithm:\n  beta: 0.3\n  prompts_per_step: 8\nrun:\n  steps: 5\n  mode: pipelined\n")
    job = parse_config(["--config", str(path), "--set", "algorithm.gamma=1", "--set", "run.max_staleness=2"])
    assert (job.algorithm.beta, job.algorithm.gamma, job.run.steps) == (0.3, 1.0, 5)
    assert job.run.mode is Mode.PIPELINED and job.run.max_staleness == 2
    again = loading.build(JobConfig, loading.to_dict(job))
    assert again == job


@pytest.mark.parametrize(
    "assignment,field",
    [
        ("algorithm.beta=2", "algorithm.beta"),
        ("run.mode=async", "run.mode"),
        ("run.stepz=3", "run.stepz"),
        ("resources.learner_ranks=0", "resources.learner_ranks"),
        ("sampling.temperature=-1", "sampling.temperature"),
        ("prompts.format=csv", "prompts.format"),
        ("algorithm.prompts_per_step=7", "algorithm.prompts_per_step"),
        ("algorithm.algorithm=ppo", "algorithm.algorithm"),
        ("algorithm.algorithm=bond,algorithm.n=4,algorithm.k_quantile=3", "algorithm.k_quantile"),
        ("algorithm.iterated=true", "algorithm.iterated"),
        ("algorithm.algorithm=reinforce,algorithm.rloo_k=1", "algorithm.rloo_k"),
        ("algorithm.anchor_copy_every=-1", "algorithm.anchor_copy_every"),
        ("algorithm.algorithm=reinforce,algorithm.gamma=1", "algorithm.gamma"),
        ("resources.reference_actors=0", "resources.reference_actors"),
        ("algorithm.n=3", "algorithm.n"),
        ("sampling.temperature=0.7", "sampling.temperature"),
        ("sampling.top_p=0.9", "sampling.top_p"),
        ("eval.bon_samples=1", "eval.bon_samples"),
    ],
)
def test_bad_values_fail_naming_the_field(assignment, field):
    data = {"resources": {"learner_ranks": 2}} if "prompts_per_step=7" in assignment else {}
    for one in assignment.split(","):
        loading.apply_override(data, one)
    with pytest.raises(ConfigError, match=f"^{field.replace('.', '[.]')}"):
        loading.build(JobConfig, data)


def test_pipelined_needs_staleness():
    with pytest.raises(ConfigError, match="run.max_staleness"):
        parse_config(["--set", "run.mode=pipelined", "--set", "run.max_staleness=0"])


def test_auto_is_the_default_and_takes_what_pipelined_refuses():
    assert JobConfig().run.mode is Mode.AUTO and parse_config([]).run.mode is Mode.AUTO
    for sets in (
        ["run.max_staleness=0"],
        ["run.pipeline_depth=2"],
        ["algorithm.algorithm=gkd", "algorithm.gkd_teacher=t"],
    ):
        job = parse_config([a for s in sets for a in ("--set", s)])
        assert job.run.mode is Mode.AUTO and job.sync_only


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="no such file"):
        parse_config(["--config", "/nonexistent.yaml"])
    with pytest.raises(ConfigError, match="expected section.field=value"):
        parse_config(["--set", "algorithm.beta"])


def test_each_algorithm_starts_the_actors_it_samples():
    from bond.records import Role

    roles = {
        a: parse_config([f"--set=algorithm.{x}" for x in a.split(",")]).actor_roles
        for a in (
            "algorithm=jbond",
            "algorithm=bond,n=4",
            "algorithm=bond,n=4,iterated=true",
            "algorithm=reinforce",
            "algorithm=rest",
            "algorithm=gkd,gkd_teacher=t",
        )
    }
    assert roles == {
        "algorithm=jbond": (Role.POLICY, Role.ANCHOR),
        "algorithm=bond,n=4": (Role.POLICY, Role.REFERENCE),
        "algorithm=bond,n=4,iterated=true": (Role.POLICY, Role.ANCHOR),
        "algorithm=reinforce": (Role.POLICY,),
        "algorithm=rest": (Role.POLICY,),
        "algorithm=gkd,gkd_teacher=t": (Role.POLICY,),
    }


def test_gkd_and_rest_train_on_one_policy_sample_per_prompt_and_no_target():
    from bond.config import Algorithm, BondConfig
    from bond.records import Role
    from bond.sampling_plan import SamplingPlan, sampling_plan

    for algorithm, extra in ((Algorithm.GKD, {"gkd_teacher": "t"}), (Algorithm.REST, {})):
        plan = sampling_plan(BondConfig(algorithm=algorithm, **extra))
        assert plan == SamplingPlan(policy=1, target_role=None, target=0) and plan.pushed == (Role.POLICY,)


def test_the_progress_bar_names_every_algorithm():
    from bond.config import Algorithm, BondConfig
    from cluster.outputs.run_log import algorithm_name

    names = {
        a: algorithm_name(BondConfig(algorithm=a, n=4 if a is Algorithm.BOND else 2, k_quantile=4, gkd_teacher="t"))
        for a in Algorithm
    }
    assert names == {
        Algorithm.JBOND: "J-BOND",
        Algorithm.BOND: "BOND",
        Algorithm.REINFORCE: "RLOO",
        Algorithm.REST: "ReST",
        Algorithm.GKD: "GKD",
    }
    assert algorithm_name(BondConfig(algorithm=Algorithm.BOND, iterated=True)) == "iterated BOND"


@pytest.mark.parametrize(
    "assignment,why",
    [
        ("sampling.seed=3", "derived from run.seed and the step"),
        ("sampling.temperature=1.0", "fixed at 1: .*untempered"),
        ("sampling.top_p=1", "fixed at 1: .*full distribution"),
        ("learner.seed=1", "removed: nothing in a learner step is random"),
        ("learner.lora.dropout=0", "removed .*deterministic function of the weights"),
        ("eval.prompts.shuffle=false", "not read: .*evaluated in file order"),
        ("eval.prompts.seed=2", "not read: .*file order"),
    ],
)
def test_derived_and_fixed_fields_are_refused_saying_why(assignment, why):
    """Fields of the records that the job derives or fixes are no knobs: setting one, even to the value the job
    uses, is a config error naming the field and saying why (rather than a value silently replaced or ignored)."""
    data: dict = {}
    loading.apply_override(data, assignment)
    field = assignment.split("=")[0]
    with pytest.raises(ConfigError, match=f"^{field.replace('.', '[.]')}: not a setting: {why}"):
        loading.build(JobConfig, data)
    with pytest.raises(ConfigError, match=f"^{field.replace('.', '[.]')}: not a setting"):
        parse_config(["--set", assignment])


def test_derived_and_fixed_fields_are_left_out_of_the_written_config():
    """config.yaml and --print-config (loading.to_dict) can be loaded again, so they hold only settings."""
    job = parse_config(["--set", "eval.prompts.path=held.jsonl", "--set", "learner.lora.r=4"])
    data = loading.to_dict(job)
    assert "seed" not in data["sampling"] and "temperature" not in data["sampling"] and "top_p" not in data["sampling"]
    assert "seed" not in data["learner"] and "dropout" not in data["learner"]["lora"]
    assert "shuffle" not in data["eval"]["prompts"] and "seed" not in data["eval"]["prompts"]
    assert data["prompts"]["shuffle"] is True and data["prompts"]["seed"] == 0  # the training prompts' are settings
    assert loading.build(JobConfig, data) == job
    assert job.learner.seed == 0 and job.learner.lora.dropout == 0.0  # what the learner reads


def test_eval_prompt_length_must_leave_room_in_the_context():
    with pytest.raises(ConfigError, match="^eval.prompts.max_prompt_length: 64 leaves no room"):
        parse_config(["--set", "engine.max_model_len=64", "--set", "eval.prompts.max_prompt_length=64"])
