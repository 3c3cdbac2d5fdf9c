"""Properties of the prompt loader under hostile files: whatever rows a JSONL or Parquet file holds (missing or
wrongly typed fields, empty or huge strings, nested junk, bad chat messages, non-UTF-8 bytes, truncated lines),
every row is either a prompt or a skip counted by reason, and a file with no usable prompt is a ConfigError
naming prompts.path; never another exception. Every prompt it keeps is text (encodable as UTF-8, as the tokenizer
and the episodes' Parquet need). Fixed example budgets and derandomized draws keep these to seconds."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bond.config import ConfigError
from bond.records import ChatMessage, Prompt
from cluster.config.prompts import PromptFormat, PromptSet, PromptSource, fit_to_policy, load_prompts
from demo.tiny import build_tokenizer

PROPERTY = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
MESSAGE = st.dictionaries(
    st.sampled_from(["role", "content", "name"]),
    st.sampled_from(["user", "system", "assistant", "", "bogus", "  "]) | st.text(max_size=12) | JUNK,
    max_size=3,
)
PROMPT = (
    st.text(max_size=30)
    | st.sampled_from(["", "   ", "\n", "\ud800", "caf\udce9"])
    | st.integers(10_000, 200_000).map(lambda n: "é" * n)
    | st.lists(MESSAGE, max_size=3)
    | JUNK
)
ROW = st.dictionaries(st.sampled_from(["prompt", "ground_truth", "id"]) | st.text(max_size=4), PROMPT, max_size=3)
LINE = (
    (ROW | JUNK).map(lambda row: json.dumps(row).encode())
    | ROW.flatmap(lambda row: st.integers(0, len(json.dumps(row))).map(lambda n: json.dumps(row)[:n].encode()))
    | st.binary(max_size=40)
    | st.sampled_from([b'{"prompt": ' + b"1" * 5000 + b"}", b"[" * 100_000, b'{"prompt": "\\ud800"}', b"\xff\xfe"])
)
SOURCES = st.fixed_dictionaries(
    {"extra_columns": st.sampled_from([None, (), ("ground_truth",)]), "string_as_user_message": st.booleans()}
)


def lines_in(data: bytes) -> int:
    return sum(1 for line in data.splitlines() if line.strip())


def check(source: PromptSource, rows: int) -> None:
    """Each of `rows` rows is a prompt or a counted skip; or nothing is usable and that is a ConfigError."""
    try:
        got = load_prompts(source)
    except ConfigError as e:
        assert str(e).startswith("prompts."), e
        return
    assert len(got.prompts) + sum(got.skipped.values()) == rows, got.skipped
    for prompt in got.prompts:
        prompt.plain_text.encode("utf-8")
        json.dumps(prompt.extras, ensure_ascii=False).encode("utf-8")


@PROPERTY
@given(lines=st.lists(LINE, max_size=8), options=SOURCES)
def test_random_jsonl_rows_are_prompts_or_counted_skips(tmp_path, lines, options):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\n".join(lines))
    check(PromptSource(path=str(path), **options), lines_in(path.read_bytes()))


@PROPERTY
@given(data=st.binary(max_size=400))
def test_random_bytes_are_counted_skips_or_a_config_error(tmp_path, data):
    path = tmp_path / "p.jsonl"
    path.write_bytes(data)
    check(PromptSource(path=str(path)), lines_in(data))
    path.write_bytes(b"PAR1" + data)
    with pytest.raises(ConfigError, match=r"^prompts\.path: cannot read"):
        load_prompts(PromptSource(path=str(path), format=PromptFormat.PARQUET))


COLUMN = st.sampled_from(
    [
        st.none() | st.text(max_size=20) | st.sampled_from(["", "  "]),
        st.none() | st.integers(-(2**63), 2**63 - 1),
        st.none()
        | st.lists(
            st.fixed_dictionaries(
                {"role": st.none() | st.text(max_size=8), "content": st.none() | st.text(max_size=8)}
            ),
            max_size=2,
        ),
        st.none() | st.fixed_dictionaries({"a": st.integers(-(2**63), 2**63 - 1)}),
    ]
)


@PROPERTY
@given(values=COLUMN.flatmap(lambda column: st.lists(column, max_size=8)), options=SOURCES)
def test_random_parquet_rows_are_prompts_or_counted_skips(tmp_path, values, options):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": values, "ground_truth": list(range(len(values)))}), path)
    check(PromptSource(path=str(path), format=PromptFormat.PARQUET, **options), len(values))


# --- the cases the properties found ------------------------------------------------------------------------------


def jsonl(tmp_path, *lines: bytes) -> PromptSource:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\n".join([b'{"prompt": "the movie"}', *lines]))
    return PromptSource(path=str(path))


@pytest.mark.bad_input(
    "prompt line with an integer of over 4300 digits, or nested thousands of levels deep",
    "skipped, counted as `invalid JSON`",
)
def test_unparsable_json_numbers_and_nesting_are_skipped(tmp_path):
    got = load_prompts(jsonl(tmp_path, b'{"prompt": "a", "id": ' + b"9" * 5000 + b"}", b"[" * 100_000))
    assert [p.text for p in got.prompts] == ["the movie"] and got.skipped == {"invalid JSON": 2}


@pytest.mark.bad_input('prompt line holding an escaped lone surrogate (`"\\ud800"`)', "skipped, counted as `not UTF-8`")
def test_lone_surrogate_escapes_are_skipped(tmp_path):
    got = load_prompts(jsonl(tmp_path, b'{"prompt": "caf\\udce9"}', b'{"prompt": "a", "gt": ["\\ud800"]}'))
    assert [p.text for p in got.prompts] == ["the movie"] and got.skipped == {"not UTF-8": 2}


# A template in the manner of many instruct models': roles it does not know, and a conversation that does not
# alternate user/assistant after an optional system turn, are refused with raise_exception.
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "{% if m['role'] == 'system' and not loop.first %}{{ raise_exception('system turn not first') }}{% endif %}"
    "<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
)


@pytest.fixture(scope="module")
def strict_tokenizer():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = STRICT_TEMPLATE
    return tokenizer


MESSAGES = st.lists(
    st.builds(
        ChatMessage, st.sampled_from(["system", "user", "assistant", "bogus", "tool", "User"]), st.text(max_size=8)
    ),
    min_size=1,
    max_size=3,
)


@PROPERTY
@given(messages=st.lists(MESSAGES, max_size=6), max_tokens=st.none() | st.integers(1, 30))
def test_chat_rows_are_fitted_or_counted_skips(strict_tokenizer, messages, max_tokens):
    prompts = tuple(dict.fromkeys(Prompt(messages=tuple(m)) for m in messages)) + (Prompt(text="the movie"),)
    try:
        got = fit_to_policy(PromptSet(prompts, {"duplicate": 2}), strict_tokenizer, max_tokens)
    except ConfigError as e:
        assert str(e).startswith("prompts.path: no usable prompt"), e
        return
    assert len(got.prompts) + sum(got.skipped.values()) == len(prompts) + 2, got.skipped


@pytest.mark.bad_input(
    "chat prompt the policy's chat template refuses (a role it does not know, turns out of order)",
    "skipped, counted as `refused by the chat template (<its message>)`",
)
def test_chat_rows_the_template_refuses_are_skipped(strict_tokenizer):
    bogus, late_system = (ChatMessage("bogus", "hi"),), (ChatMessage("user", "a"), ChatMessage("system", "b"))
    prompts = (Prompt(text="the movie"), Prompt(messages=bogus), Prompt(messages=late_system))
    got = fit_to_policy(PromptSet(prompts), strict_tokenizer, None)
    assert got.prompts == (Prompt(text="the movie"),)
    assert got.skipped == {
        "refused by the chat template (unknown role bogus)": 1,
        "refused by the chat template (system turn not first)": 1,
    }
