"""rest and gkd at the edges: config errors name the field, the GKD teacher is checked before anything starts, and
a resumed rest run rebuilds the round in progress from its Grow file on disk (or says which one is missing)."""

import json
import shutil

import pytest

from bond.config import ConfigError
from bond.records import Completion, Role, ScoredCompletion
from cluster.config import preflight
from cluster.main import main, parse_config
from cluster.outputs.episodes import EpisodeWriter, read_scored
from cluster.training import rest
from learner.checkpoint_dir import CheckpointError


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["algorithm.algorithm=gkd"], "algorithm.gkd_teacher"),
        (["algorithm.gkd_beta=1.5"], "algorithm.gkd_beta"),
        (["algorithm.rest_quantiles=[0.0, 0.9, 0.7]"], "algorithm.rest_quantiles"),
        (["algorithm.rest_quantiles=[0.0, 1.0]"], "algorithm.rest_quantiles"),
        (["algorithm.rest_quantiles=[]"], "algorithm.rest_quantiles"),
        (["algorithm.rest_samples_per_prompt=0"], "algorithm.rest_samples_per_prompt"),
        (
            ["algorithm.algorithm=rest", "algorithm.rest_grow_prompts=4", "algorithm.rest_samples_per_prompt=2"],
            "algorithm.rest_grow_prompts",
        ),  # 8 samples < prompts_per_step 128
        (["algorithm.algorithm=rest", "run.mode=pipelined"], "run.mode"),
    ],
)
def test_bad_rest_and_gkd_fields_are_config_errors(overrides, field):
    args = [a for o in overrides for a in ("--set", o)]
    with pytest.raises(ConfigError, match=f"^{field.replace('.', '[.]')}: "):
        parse_config(args)


def test_the_cli_exits_2_naming_the_field(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--set", "algorithm.algorithm=gkd"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("config error: algorithm.gkd_teacher: algorithm=gkd needs a teacher")


def test_the_teacher_is_checked_before_start(tiny_dir, tmp_path):
    policy = str(tiny_dir / "policy")
    preflight.check_teacher(policy, policy)  # the policy itself is a valid (if pointless) teacher
    with pytest.raises(ConfigError, match="^algorithm.gkd_teacher: .*does not exist"):
        preflight.check_teacher(str(tmp_path / "nowhere"), policy)
    other = tmp_path / "other_tokenizer"  # as many tokens, two of them swapped: same shapes, other meanings
    shutil.copytree(tiny_dir / "policy", other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["▁acting"], vocab["▁and"] = vocab["▁and"], vocab["▁acting"]
    (other / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="^algorithm.gkd_teacher: the tokenizer of .* differs"):
        preflight.check_teacher(str(other), policy)


def grow_samples(rewards):
    return [
        ScoredCompletion(
            Completion(
                prompt_id=i // 2,
                prompt=f"p{i // 2}",
                prompt_token_ids=(1, 7 + i),
                token_ids=(9, 2),
                text="good movie",
                logprobs=(-0.5, -0.25),
                role=Role.POLICY,
                weights_version=3,
                finish_reason="stop",
            ),
            reward=r,
            reward_model_id="rm@1",
        )
        for i, r in enumerate(rewards)
    ]


def rest_job(**fields):
    args = [
        "--set",
        "algorithm.algorithm=rest",
        "--set",
        "algorithm.prompts_per_step=4",
        "--set",
        "learner.micro_batch_prompts=4",
        "--set",
        "algorithm.rest_grow_prompts=4",
        "--set",
        "algorithm.rest_samples_per_prompt=2",
        "--set",
        "algorithm.rest_quantiles=[0.0, 0.5]",
    ]
    return parse_config(args + [a for k, v in fields.items() for a in ("--set", f"{k}={v}")])


def test_grow_episodes_read_back_as_the_learner_took_them(tmp_path):
    samples = grow_samples([0.5, -1.0, 2.0])
    assert read_scored(EpisodeWriter(tmp_path).write(7, samples)) == samples


def test_resume_rebuilds_the_round_in_progress(tmp_path):
    job = rest_job()
    writer = EpisodeWriter(tmp_path / rest.GROW_DIR)
    first = rest.plan(job, 0, grow_samples([0.1 * i for i in range(8)]))
    assert [len(p.batches) for p in first.phases] == [2, 1] and first.end_step == 3  # 8 kept, then 4 of 8
    writer.write(0, first.dataset)
    second = rest.plan(job, 3, grow_samples([1.0, 0.0] * 4))
    writer.write(3, second.dataset)
    assert rest.round_in_progress(job, tmp_path, 2) == first  # mid-round: the same batches again
    assert rest.round_in_progress(job, tmp_path, 3) is None  # at a round's end: a new Grow ...
    assert not (tmp_path / rest.GROW_DIR / "step_0000003.parquet").exists()  # ... replacing the abandoned one
    with pytest.raises(CheckpointError, match="round in progress is missing"):
        rest.round_in_progress(job, tmp_path, 5)
    assert rest.round_in_progress(job, tmp_path, 0) is None  # a fresh run starts clean
    assert not list((tmp_path / rest.GROW_DIR).glob("*.parquet"))
    with pytest.raises(CheckpointError, match="no Grow dataset"):
        rest.round_in_progress(job, tmp_path, 1)
