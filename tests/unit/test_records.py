import math

import pytest

from bond.records import Batch, Completion, Role, ScoredCompletion


def completion(prompt_id=0, role=Role.POLICY, tokens=(5, 6), logprobs=(-0.5, -1.0)):
    return Completion(
        prompt_id=prompt_id,
        prompt="the movie",
        prompt_token_ids=(1, 2),
        token_ids=tokens,
        text="was fun",
        logprobs=logprobs,
        role=role,
        weights_version=3,
    )


def scored(reward=1.0, **kw):
    return ScoredCompletion(completion(**kw), reward=reward, reward_model_id="rm@test")


def test_sum_logprob():
    assert completion().sum_logprob == pytest.approx(-1.5)


def test_mismatched_logprobs_refused():
    with pytest.raises(ValueError, match="logprobs"):
        completion(tokens=(1, 2, 3))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_reward_refused_naming_the_model(bad):
    with pytest.raises(ValueError, match="rm@test"):
        scored(reward=bad)


def test_batch_checks_roles_and_prompts():
    ok = Batch(policy=((scored(),),), target=((scored(role=Role.ANCHOR), scored(role=Role.ANCHOR)),))
    assert ok.size == 1 and ok.slice(0, 1) == ok and ok.target_role is Role.ANCHOR
    rloo = Batch(policy=((scored(), scored()),), target=((),))
    assert rloo.target_role is None and len(rloo.policy_samples) == 2
    with pytest.raises(ValueError, match="role"):
        Batch(policy=((scored(role=Role.ANCHOR),),), target=((scored(role=Role.ANCHOR),),))
    with pytest.raises(ValueError, match="one non-policy role"):
        Batch(policy=((scored(),),), target=((scored(role=Role.ANCHOR), scored(role=Role.REFERENCE)),))
    with pytest.raises(ValueError, match="prompt ids"):
        Batch(policy=((scored(),),), target=((scored(role=Role.ANCHOR, prompt_id=1),),))
    with pytest.raises(ValueError, match="same number of target"):
        Batch(
            policy=((scored(),), (scored(prompt_id=1),)),
            target=((scored(role=Role.ANCHOR),), (scored(role=Role.ANCHOR, prompt_id=1),) * 2),
        )
    with pytest.raises(ValueError, match="same nonzero number of policy"):
        Batch(policy=((),), target=((),))
    # rest's SFT batch: single policy samples, two of them may share a prompt
    sft = Batch(policy=((scored(),), (scored(),)), target=((), ()))
    assert sft.size == 2 and sft.target_samples == []


def test_request_seeds_are_distinct_across_roles_actors_and_steps():
    """Every (step, role, prompt id, sample index) of a run gets its own seed: roles get their own stream
    (role_settings), a role's actors split the prompt ids, and each step's base seed differs."""
    from actors.sampling import SamplingSettings
    from cluster.training.seeds import role_settings

    # the loop's base seed is run.seed * 1_000_003 + step: step itself for run.seed 0
    seeds = [
        role_settings(SamplingSettings(seed=step), role).sample_seed(prompt_id, j)
        for step in range(3)
        for role in Role
        for prompt_id in range(16)
        for j in range(4)
    ]
    assert len(set(seeds)) == len(seeds) == 3 * 3 * 16 * 4
