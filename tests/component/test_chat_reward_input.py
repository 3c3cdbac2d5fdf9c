"""The reward model's input is built with ITS tokenizer: a chat template when it has one (prompt messages +
the completion as the assistant turn, BOS written once by the template), else prompt + completion."""

import shutil

import pytest

from bond.records import ChatMessage, Prompt
from reward_service.learned import LearnedRewardModel

# Renders the conversation as the tiny reward model was trained to read it, with BOS from the template.
TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}{% endfor %}"


@pytest.fixture(scope="module")
def templated_reward(tiny_dir, tmp_path_factory):
    copy = tmp_path_factory.mktemp("rm") / "reward"
    shutil.copytree(tiny_dir / "reward", copy)
    (copy / "chat_template.jinja").write_text(TEMPLATE)
    return LearnedRewardModel(str(copy))


def test_templated_reward_input_and_score(tiny_dir, templated_reward):
    plain = LearnedRewardModel(str(tiny_dir / "reward"))
    assert not plain.templated and templated_reward.templated
    prompts = [Prompt(messages=(ChatMessage("user", "the movie"),)), "the plot"]
    completions = ["was great .", "was dull ."]
    assert templated_reward.inputs(prompts, completions) == ["<s>the movie was great .", "<s>the plot was dull ."]
    assert plain.inputs(prompts, completions) == ["the movie was great .", "the plot was dull ."]
    # the same tokens reach the classifier (one BOS: the template's), so the same rewards; a doubled BOS would differ
    assert templated_reward.score(prompts, completions) == pytest.approx(plain.score(prompts, completions), abs=1e-6)
    doubled = templated_reward._classifier.logits(templated_reward.inputs(prompts, completions))[:, 0].tolist()
    assert max(abs(a - b) for a, b in zip(doubled, plain.score(prompts, completions), strict=True)) > 1e-4
