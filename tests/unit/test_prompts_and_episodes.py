import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bond.records import Completion, Role, ScoredCompletion
from bond.sampling_plan import SamplingPlan
from cluster.config.prompts import PromptCursor, PromptFormat, PromptSource, load_prompts, take
from cluster.outputs.episodes import EpisodeWriter, read_episodes
from cluster.training.loop import make_batch


def test_jsonl_bad_rows_are_counted_not_lost(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "the movie"}, {"prompt": ""}, {"text": "x"}, {"prompt": 3}, {"prompt": " the film "}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = load_prompts(PromptSource(path=str(path)))
    assert [p.text for p in got.prompts] == ["the movie", "the film"]
    assert got.skipped == {"empty": 1, "missing field 'prompt'": 1, "not a string or a message list (int)": 1}


def test_invalid_json_line_is_skipped_and_counted(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{not json\n')
    got = load_prompts(PromptSource(path=str(path)))
    assert [p.text for p in got.prompts] == ["a"] and got.skipped == {"invalid JSON": 1}


def test_parquet_and_empty_source(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"q": ["a", "b", None]}), path)
    got = load_prompts(PromptSource(path=str(path), format=PromptFormat.PARQUET, field="q")).prompts
    assert [p.text for p in got] == ["a", "b"]
    with pytest.raises(ValueError, match="no column 'prompt'"):
        load_prompts(PromptSource(path=str(path), format=PromptFormat.PARQUET))
    empty = tmp_path / "e.jsonl"
    empty.write_text('{"prompt": ""}\n')
    with pytest.raises(ValueError, match="no usable prompt"):
        load_prompts(PromptSource(path=str(empty)))


def test_cursor_walks_epochs_deterministically():
    prompts = tuple("abcde")
    first, cur = take(prompts, PromptCursor(), 3, seed=1, shuffle=True)
    second, cur2 = take(prompts, cur, 4, seed=1, shuffle=True)
    assert cur == PromptCursor(0, 3) and cur2 == PromptCursor(1, 2)
    assert sorted(p for _, p in first + second[:2]) == list("abcde")  # one full epoch, no repeats
    again, _ = take(prompts, cur, 4, seed=1, shuffle=True)  # resuming from a saved cursor repeats exactly
    assert again == second


def sample(role, prompt_id, reward, j=0):
    c = Completion(
        prompt_id=prompt_id,
        prompt=f"p{prompt_id}",
        prompt_token_ids=(1,),
        token_ids=(5, 2),
        text=f"y{j}",
        logprobs=(-0.1, -0.2),
        role=role,
        weights_version=4,
        finish_reason="stop",
    )
    return ScoredCompletion(c, reward=reward, reward_model_id="rm")


def test_make_batch_pairs_by_prompt():
    scored = [
        sample(Role.ANCHOR, 1, 0.5, 0),
        sample(Role.POLICY, 1, 1.0),
        sample(Role.POLICY, 0, 0.0),
        sample(Role.ANCHOR, 0, 0.1, 0),
        sample(Role.ANCHOR, 0, 0.2, 1),
        sample(Role.ANCHOR, 1, 0.6, 1),
    ]
    batch = make_batch(scored, SamplingPlan(policy=1, target_role=Role.ANCHOR, target=2))
    assert [[p.completion.prompt_id for p in g] for g in batch.policy] == [[0], [1]]
    assert [[a.reward for a in g] for g in batch.target] == [[0.1, 0.2], [0.5, 0.6]]
    with pytest.raises(ValueError, match="expected 2 anchor samples per prompt"):  # a lost sample is an error
        make_batch(scored[:-1], SamplingPlan(policy=1, target_role=Role.ANCHOR, target=2))
    with pytest.raises(ValueError, match="this plan samples"):
        make_batch(scored, SamplingPlan(policy=1, target_role=Role.REFERENCE, target=2))


def test_make_batch_groups_rloo_policy_samples():
    scored = [sample(Role.POLICY, i % 2, float(i), i) for i in range(6)]
    batch = make_batch(scored, SamplingPlan(policy=3, target_role=None, target=0))
    assert [[s.reward for s in g] for g in batch.policy] == [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]
    assert batch.target == ((), ()) and batch.target_role is None


def test_episodes_rlds_rows(tmp_path):
    writer = EpisodeWriter(tmp_path)
    writer.write(1, [sample(Role.POLICY, 0, 1.5), sample(Role.ANCHOR, 0, 0.5)])
    writer.write(2, [sample(Role.POLICY, 0, 2.5)])
    table = read_episodes(tmp_path)
    assert table.num_rows == 3
    row = table.slice(0, 1).to_pylist()[0]
    assert row["is_first"] and row["is_last"] and row["is_terminal"] and row["discount"] == 1.0
    assert (row["observation"], row["action"], row["reward"], row["role"], row["weights_version"]) == (
        "p0",
        "y0",
        1.5,
        "policy",
        4,
    )
    assert row["logprobs"] == pytest.approx([-0.1, -0.2])
    assert not list(tmp_path.glob("*.tmp"))


def test_grammar_accepts_what_it_generates_and_rejects_corruptions():
    import random

    from demo import review_grammar as g

    rng = random.Random(0)
    sentences = [g.sentence(rng, p_positive=0.5) for _ in range(2000)]
    assert all(g.is_well_formed(s) for s in sentences)
    assert any(s.startswith("i thought") for s in sentences)
    assert g.review_score("i thought the movie was great .") == 1.0
    assert g.review_score("the movie was great but the plot was dull .") == 0.0
    assert g.review_score("great great great .") == -2.0
    assert not g.is_well_formed("the movie was . great")
