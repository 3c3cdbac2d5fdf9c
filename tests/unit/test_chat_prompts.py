"""The prompt data contract: string or chat-message rows, extras, the policy's chat template, BOS exactly once,
max_prompt_length skips, and the reward inputs built from the prompt record (literal expectations)."""

import json
import random

import pytest

from actors.prompt_rendering import render
from bond.config import ConfigError
from bond.records import ChatMessage, Prompt
from cluster.config.prompts import PromptSource, fit_to_policy, load_prompts
from demo.tiny import BOS, build_chat_tokenizer, build_tokenizer
from reward_service.errors import BadRequestError, RewardModelError
from reward_service.function import FunctionReward
from reward_service.request import ScoreRequest

# A Llama-3/Gemma-style template: it writes BOS itself, and the tokenizer also adds BOS when encoding.
BOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}i thought{% endif %}"
)


@pytest.fixture(scope="module")
def llama_tokenizer():
    tok = build_tokenizer()
    tok.chat_template = BOS_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return build_chat_tokenizer(random.Random(0))


def test_rows_may_be_strings_or_messages_and_carry_extras(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "the movie", "ground_truth": "was"},
        {"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "the plot"}], "id": 7},
        {"prompt": []},
        {"prompt": [{"role": "user"}]},
        {"prompt": [{"role": "user", "content": "  "}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = load_prompts(PromptSource(path=str(path)))
    assert got.prompts == (
        Prompt(text="the movie", extras={"ground_truth": "was"}),
        Prompt(messages=(ChatMessage("system", "be kind"), ChatMessage("user", "the plot")), extras={"id": 7}),
    )
    assert got.skipped == {"empty message list": 1, "message without a string role and content": 1, "empty": 1}
    assert got.prompts[1].plain_text == "be kind\nthe plot"
    only = load_prompts(PromptSource(path=str(path), extra_columns=("ground_truth",)))
    assert only.prompts == (Prompt(text="the movie", extras={"ground_truth": "was"}),)
    assert only.skipped["missing extra column 'ground_truth'"] == 4  # the chat row and the three bad rows
    assert load_prompts(PromptSource(path=str(path), extra_columns=())).prompts[1].extras == {}


def test_chat_template_and_no_double_bos(llama_tokenizer):
    t = llama_tokenizer
    the, movie, i_, thought = t.convert_tokens_to_ids(["\u2581the", "\u2581movie", "\u2581i", "\u2581thought"])
    chat = render(t, Prompt(messages=(ChatMessage("user", "the movie"),)))
    assert chat.text == "<s>the movie i thought"  # the template's generation prompt is appended
    assert chat.token_ids == (BOS, the, movie, i_, thought)  # one BOS: the template's, none added on encoding
    assert render(t, "the movie").token_ids == (BOS, the, movie)  # a plain prompt gets the tokenizer's BOS
    assert render(t, "<s> the movie").token_ids == (BOS, the, movie)  # a pre-templated one keeps its own only


def test_qwen_chat_template_literal(qwen_tokenizer):
    t = qwen_tokenizer
    chat = render(t, Prompt(messages=(ChatMessage("user", "the movie"),)))
    assert chat.text == "<|im_start|>user\nthe movie<|im_end|>\n<|im_start|>assistant\n"
    assert t.convert_ids_to_tokens(list(chat.token_ids)) == [
        "<|im_start|>",
        "user",
        "\u010a",
        "the",
        "\u0120movie",
        "<|im_end|>",
        "\u010a",
        "<|im_start|>",
        "assistant",
        "\u010a",
    ]


def test_max_prompt_length_skips_are_counted_and_a_missing_template_is_a_config_error(tmp_path, qwen_tokenizer):
    path = tmp_path / "p.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": "the movie"}]},  # 10 tokens rendered (see the literal above)
        {"prompt": [{"role": "user", "content": "i thought the movie was great"}]},
        {"prompt": "the plot"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = load_prompts(PromptSource(path=str(path)))
    fitted = fit_to_policy(loaded, qwen_tokenizer, max_tokens=10)
    assert [p.plain_text for p in fitted.prompts] == ["the movie", "the plot"]
    assert fitted.skipped == {"longer than 10 tokens": 1}
    with pytest.raises(ConfigError, match="^models.policy: .*no chat template"):
        fit_to_policy(loaded, build_tokenizer(), max_tokens=None)


def test_function_rewards_receive_dataset_columns():
    fn = FunctionReward("tests.component.tiny_reward_functions:matches_ground_truth")
    prompts = [
        Prompt(text="the movie", extras={"ground_truth": "was", "id": 1}),
        Prompt(messages=(ChatMessage("user", "the plot"),), extras={"ground_truth": "felt"}),
    ]
    assert fn.score(prompts, [" was great .", "was dull ."]) == [1.0, 0.0]
    with pytest.raises(RewardModelError, match=r"needs column\(s\) \['ground_truth'\] for sample 0"):
        fn.score(["the movie"], ["was great ."])  # a bare string has no columns: named, not defaulted
    every = FunctionReward("tests.component.tiny_reward_functions:counts_columns")
    assert every.score([Prompt(text="x", extras={"a": 1, "b": 2}), "y"], ["z", "z"]) == [2.0, 0.0]


def test_score_request_json_accepts_message_prompts():
    body = json.dumps(
        {
            "prompts": [
                "the movie",
                {"messages": [{"role": "user", "content": "the plot"}], "extras": {"ground_truth": "was"}},
            ],
            "completions": ["a", "b"],
        }
    ).encode()
    request = ScoreRequest.from_json(body)
    assert request.prompts == (
        "the movie",
        Prompt(messages=(ChatMessage("user", "the plot"),), extras={"ground_truth": "was"}),
    )
    for bad in ({"messages": []}, {"text": "a", "messages": []}, {"txt": "a"}, {"text": "a", "extras": [1]}):
        with pytest.raises(BadRequestError):
            ScoreRequest.from_json(json.dumps({"prompts": [bad], "completions": ["a"]}).encode())
