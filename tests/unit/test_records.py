import math

import pytest

from bond.records import Batch, Completion, Role, ScoredCompletion


def completion(prompt_id=0, role=Role.POLICY, tokens=(5, 6), logprobs=(-0.5, -1.0)):
    return Completion(prompt_id=prompt_id, prompt="the movie", prompt_token_ids=(1, 2), token_ids=tokens,
                      text="was fun", logprobs=logprobs, role=role, weights_version=3)


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
    ok = Batch(policy=(scored(),), anchor=((scored(role=Role.ANCHOR), scored(role=Role.ANCHOR)),))
    assert ok.size == 1 and ok.slice(0, 1) == ok
    with pytest.raises(ValueError, match="role"):
        Batch(policy=(scored(role=Role.ANCHOR),), anchor=((scored(role=Role.ANCHOR),),))
    with pytest.raises(ValueError, match="prompt"):
        Batch(policy=(scored(),), anchor=((scored(role=Role.ANCHOR, prompt_id=1),),))
    assert Batch(policy=(scored(),), anchor=((),)).size == 1  # rest trains on policy samples alone
    with pytest.raises(ValueError, match="same number"):
        Batch(policy=(scored(), scored(prompt_id=1)),
              anchor=((scored(role=Role.ANCHOR),), (scored(role=Role.ANCHOR, prompt_id=1),) * 2))
