"""The reward HTTP API's request model, without Ray: any bytes or JSON a client sends end in a ScoreRequest or
a BadRequestError (a 4xx), never another exception (a 500)."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bond.records import Prompt
from reward_service.errors import BadRequestError
from reward_service.request import ScoreBody, ScoreRequest

JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
MESSAGE = st.fixed_dictionaries({"role": st.text(max_size=5), "content": st.text(max_size=10)})
PROMPT = st.text(max_size=20) | st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=20),
        "messages": st.lists(MESSAGE, max_size=3),
        "extras": st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3) | JSON_VALUES,
        "other": JSON_VALUES,
    },
)
SCORE_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "prompts": st.lists(PROMPT, max_size=4) | JSON_VALUES,
        "completions": st.lists(st.text(max_size=20), max_size=4) | JSON_VALUES,
    },
)


def _parse(body: bytes) -> ScoreRequest | BadRequestError:
    try:
        return ScoreRequest.from_json(body)
    except BadRequestError as error:
        assert error.reason in {"bad_json", "missing_field", "wrong_type", "length_mismatch", "bad_unicode"}
        assert error.message and len(error.message) < 1000
        return error


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200) | SCORE_LIKE.map(lambda v: json.dumps(v).encode()))
def test_any_body_is_a_request_or_a_bad_request(body):
    _parse(body)


@settings(max_examples=100, deadline=None)
@given(prompts=st.lists(PROMPT, max_size=4), completions=st.lists(st.text(max_size=20), max_size=4))
def test_a_valid_body_keeps_every_prompt_and_completion_in_order(prompts, completions):
    parsed = _parse(json.dumps({"prompts": prompts, "completions": completions}).encode())
    if isinstance(parsed, ScoreRequest):
        assert parsed.completions == tuple(completions)
        for sent, got in zip(prompts, parsed.prompts, strict=True):
            if isinstance(sent, str):
                assert got == sent
            else:
                assert isinstance(got, Prompt) and got.extras == sent.get("extras", {})
    elif len(prompts) != len(completions):
        assert parsed.reason in ("length_mismatch", "wrong_type")


def test_nesting_deeper_than_the_parser_allows_is_bad_json():
    for body in (b"[" * 5000, b'{"prompts": [' + b"[" * 5000):
        assert _parse(body).reason == "bad_json"
    deep = b'{"prompts": [{"text": "a", "extras": {"x": ' + b"[" * 900 + b"]" * 900 + b'}}], "completions": ["c"]}'
    error = _parse(deep)
    assert error.reason == "wrong_type" and error.message.startswith("prompts[0].extras: ")


def test_the_schema_is_the_documented_body():
    schema = ScoreBody.model_json_schema()
    assert set(schema["required"]) == {"prompts", "completions"}
    assert {"PromptBody", "ChatMessageBody"} <= set(schema["$defs"])
