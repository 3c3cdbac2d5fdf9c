"""VllmSampler on the tiny model against the HF-transformers reference: outputs, logprobs, in-place weight pushes.

One engine serves the whole module (engine start is the slow part); tests that push weights put the
original weights back under a new version, so test order does not matter.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from actors.hf_sampler import HfSampler
from actors.sampling import SamplingSettings
from actors.vllm_sampler import VllmSampler
from bond.config import ConfigError
from bond.records import Role, WeightUpdate
from demo.review_grammar import PROMPTS

GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=24)
# fp32 on both sides, but different kernels (vLLM's CPU attention and oneDNN GEMMs vs torch's matmul and
# sdpa) sum in different orders: we measured per-token differences of ~3e-6 nats. 1e-4 keeps a 30x margin
# while a wrong or stale weight moves logprobs by 1e-2 or more.
LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def policy(tiny_dir):
    sampler = VllmSampler(str(tiny_dir / "policy"), Role.POLICY, max_model_len=64)
    yield sampler
    sampler.close()


@pytest.fixture(scope="module")
def reference(tiny_dir):
    return HfSampler(str(tiny_dir / "policy"), Role.POLICY)


@pytest.fixture(scope="module")
def original(tiny_dir) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_dir / "policy" / "model.safetensors"))


@pytest.fixture(scope="module")
def other_dir(tiny_dir, original, tmp_path_factory):
    """A second model: the tiny policy with every weight perturbed (seeded), so greedy outputs change."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir / "policy"))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5 * p.std().clamp_min(0.05))
    out = tmp_path_factory.mktemp("other")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def other_reference(other_dir, tiny_dir):
    return HfSampler(str(other_dir), Role.POLICY, tokenizer=str(tiny_dir / "tokenizer"))


def push(sampler, tensors, last_bucket=True, version=None, bucket=0):
    version = sampler.weights_version + 1 if version is None else version
    return sampler.load_weights(WeightUpdate(sampler.role, version, tensors, last_bucket=last_bucket, bucket=bucket))


def assert_same(got, want):
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert [c.text for c in got] == [c.text for c in want]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in want]
    for a, b in zip(got, want, strict=True):
        assert a.prompt_token_ids == b.prompt_token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=LOGPROB_ATOL, rtol=0)


def test_greedy_equals_hf_greedy(policy, reference):
    got = policy.generate(PROMPTS, 2, GREEDY)
    assert len(got) == 2 * len(PROMPTS)
    assert [c.prompt_id for c in got] == [i for i in range(len(PROMPTS)) for _ in range(2)]
    assert all(c.role is Role.POLICY and c.weights_version == policy.weights_version for c in got)
    assert any(c.finish_reason == "stop" and c.token_ids[-1] == 2 for c in got)  # EOS kept in token_ids
    assert_same(got, reference.generate(PROMPTS, 2, GREEDY))
    stopping = SamplingSettings(temperature=0.0, max_new_tokens=24, stop=("terrible", "boring"))
    got = policy.generate(PROMPTS, 1, stopping)
    assert any(c.finish_reason == "stop" and c.token_ids[-1] != 2 for c in got)  # a stop string fired
    assert_same(got, reference.generate(PROMPTS, 1, stopping))


def test_sampled_logprobs_are_the_models(policy, reference):
    """The per-token logprobs vLLM reports for its samples are log pi(y_t | x, y_<t) of a plain forward pass."""
    got = policy.generate(PROMPTS[:6], 3, SamplingSettings(seed=11, max_new_tokens=16))
    tokens = [c.token_ids for c in got]
    prompts = [c.prompt for c in got]
    for c, ref in zip(got, reference.token_logprobs(prompts, tokens), strict=True):
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(ref), atol=LOGPROB_ATOL, rtol=0)
    scored = policy.score_logprobs(prompts, tokens)
    assert scored == pytest.approx([c.sum_logprob for c in got], abs=1e-3)


def test_n_samples_differ_and_seed_reproduces(policy):
    settings = SamplingSettings(seed=5, max_new_tokens=16)
    got = policy.generate(["the movie", "the plot"], 8, settings, prompt_ids=[40, 41])
    assert [c.prompt_id for c in got] == [40] * 8 + [41] * 8
    assert len({c.token_ids for c in got[:8]}) > 1, "the 8 samples of one prompt are all identical"
    again = policy.generate(["the movie", "the plot"], 8, settings, prompt_ids=[40, 41])
    assert [c.token_ids for c in again] == [c.token_ids for c in got]
    unseeded = policy.generate(["the movie"], 8, SamplingSettings(max_new_tokens=16))
    assert len({c.token_ids for c in unseeded}) > 1
    assert all(len(c.token_ids) == len(c.logprobs) <= 16 for c in got + unseeded)


def test_actors_sharing_a_step_draw_independent_samples(policy):
    """The loop splits one step's prompts over the actors of a role, with the same seeded settings: seeds are
    keyed by prompt id, so two shares of identical prompts must not repeat each other's samples."""
    settings = SamplingSettings(max_new_tokens=16, seed=11)
    prompt = PROMPTS[0]
    share_a = policy.generate([prompt] * 8, 1, settings, prompt_ids=list(range(0, 16, 2)))
    share_b = policy.generate([prompt] * 8, 1, settings, prompt_ids=list(range(1, 16, 2)))
    # Seeds keyed by position in the call would make share_b a copy of share_a, sample for sample.
    assert [c.token_ids for c in share_a] != [c.token_ids for c in share_b]
    assert len({c.token_ids for c in share_a + share_b}) > 2
    again = policy.generate([prompt] * 8, 1, settings, prompt_ids=list(range(0, 16, 2)))  # reproducible (resume)
    assert [c.token_ids for c in again] == [c.token_ids for c in share_a]


def test_full_update_serves_the_other_model(policy, reference, other_reference, original, other_dir):
    before = policy.generate(PROMPTS, 1, GREEDY)
    other = load_file(str(other_dir / "model.safetensors"))
    version = policy.weights_version + 1
    assert push(policy, other, version=version) == version == policy.weights_version
    got = policy.generate(PROMPTS, 1, GREEDY)
    assert [c.token_ids for c in got] != [c.token_ids for c in before], "the second model should answer differently"
    assert all(c.weights_version == version for c in got)
    assert_same(got, other_reference.generate(PROMPTS, 1, GREEDY))
    push(policy, original)
    assert_same(policy.generate(PROMPTS, 1, GREEDY), reference.generate(PROMPTS, 1, GREEDY))


def test_bucketed_partial_update(policy, original, other_dir, tiny_dir):
    """Two buckets touching part of the model (q_proj without k/v, up_proj without gate): nothing changes
    until the last bucket; then the engine equals an HF model given the same parameters."""
    other = load_file(str(other_dir / "model.safetensors"))
    bucket1 = {k: other[k] for k in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight")}
    bucket2 = {k: other[k] for k in ("lm_head.weight", "model.layers.1.input_layernorm.weight")}
    ref = HfSampler(str(tiny_dir / "policy"), Role.POLICY)
    before, version = policy.generate(PROMPTS, 1, GREEDY), policy.weights_version
    assert push(policy, bucket1, last_bucket=False, version=version + 1) == version
    assert_same(policy.generate(PROMPTS, 1, GREEDY), before)  # a half-received push is not served
    assert push(policy, bucket2, last_bucket=True, version=version + 1, bucket=1) == version + 1
    for i, (bucket, last) in enumerate(((bucket1, False), (bucket2, True))):
        ref.load_weights(WeightUpdate(Role.POLICY, version + 1, bucket, last_bucket=last, bucket=i))
    got = policy.generate(PROMPTS, 1, GREEDY)
    assert [c.token_ids for c in got] != [c.token_ids for c in before]
    assert_same(got, ref.generate(PROMPTS, 1, GREEDY))
    push(policy, original)


@pytest.mark.parametrize(
    ("name", "tensor", "message"),
    [
        ("model.layers.0.self_attn.q_proj.weight", torch.zeros(128, 64), r"q_proj.weight.*\(128, 64\).*\(128, 128\)"),
        ("model.layers.9.self_attn.q_proj.weight", torch.zeros(128, 128), "unknown parameter 'model.layers.9"),
        ("model.norm.weight", torch.zeros(128, dtype=torch.bfloat16), "dtype torch.bfloat16"),
        ("model.norm.weight", torch.full((128,), float("nan")), "non-finite"),
    ],
)
def test_bad_update_is_refused_and_engine_keeps_serving(policy, original, name, tensor, message):
    before, version = policy.generate(PROMPTS[:4], 1, GREEDY), policy.weights_version
    good = {"model.layers.1.mlp.down_proj.weight": original["model.layers.1.mlp.down_proj.weight"] * 2}
    with pytest.raises(ValueError, match=message):
        push(policy, {**good, name: tensor})
    assert policy.weights_version == version
    assert_same(policy.generate(PROMPTS[:4], 1, GREEDY), before)


def test_wrong_role_or_stale_version_is_refused(policy, original):
    with pytest.raises(ValueError, match="role 'anchor'"):
        policy.load_weights(WeightUpdate(Role.ANCHOR, policy.weights_version + 1, original))
    with pytest.raises(ValueError, match="stale"):
        policy.load_weights(WeightUpdate(Role.POLICY, policy.weights_version - 1, original))


def test_bad_inputs(policy):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        policy.generate(["the movie", "  "], 1, GREEDY)
    with pytest.raises(ValueError, match="prompt 0 is 71 tokens long; the model's context is 64"):
        policy.generate([" ".join(["the"] * 70)], 1, GREEDY)
    with pytest.raises(ValueError, match="n .* >= 1"):
        policy.generate(["the movie"], 0, GREEDY)
    with pytest.raises(ValueError, match="single string"):
        policy.generate("the movie", 1, GREEDY)
    with pytest.raises(ConfigError, match="top_p"):
        SamplingSettings(top_p=0.0)
    assert policy.generate([], 2, GREEDY) == []
    # A prompt near the end of the context gets the tokens that fit, not an error.
    near = policy.generate([" ".join(["the"] * 60)], 1, SamplingSettings(max_new_tokens=32, seed=0))
    assert len(near[0].token_ids) <= 3
    assert len(policy.generate(["the movie"], 1, GREEDY)) == 1


def test_policy_and_anchor_engines_coexist(policy, reference, other_reference, other_dir, tiny_dir):
    anchor = VllmSampler(str(tiny_dir / "policy"), Role.ANCHOR, max_model_len=64, initial_version=100)
    try:
        assert anchor.weights_version == 100
        anchor.load_weights(WeightUpdate(Role.ANCHOR, 101, load_file(str(other_dir / "model.safetensors"))))
        got = anchor.generate(PROMPTS, 2, GREEDY)
        assert all(c.role is Role.ANCHOR and c.weights_version == 101 for c in got)
        assert_same(got, other_reference.generate(PROMPTS, 2, GREEDY))
        assert_same(policy.generate(PROMPTS, 1, GREEDY), reference.generate(PROMPTS, 1, GREEDY))
    finally:
        anchor.close()


def _linear_kernels(worker) -> list[tuple[bool, bool]]:
    """(keeps a plain weight, serves a kernel other than F.linear) for each linear layer of a vLLM worker's model."""
    layers = [m for m in worker.model_runner.get_model().modules() if hasattr(m, "cpu_linear")]
    return [(m.weight.numel() > 0, m.cpu_linear is not torch.nn.functional.linear) for m in layers]


@pytest.mark.slow
def test_plain_weight_push_scores_like_a_fresh_engine_of_the_pushed_weights(original, other_dir, tiny_dir):
    """The CPU fast path (plain weight parameters, a push is one copy into them, then the kernels' packed copies
    are rebuilt from them) gives the log-probs of an engine started from the pushed checkpoint with vLLM's own
    packed kernels; a packed copy left stale would score the original model instead (>= 1e-2 away, asserted). The
    packed engine's own reload (plain_weights=False) is checked the same way on the way back. It starts its own
    engines: closing an in-process engine (the test above does) runs vLLM's cleanup_dist_env_and_memory, which
    leaves the module's engine without its process groups."""
    plain = VllmSampler(str(tiny_dir / "policy"), Role.POLICY, max_model_len=64)
    fresh = VllmSampler(
        str(other_dir), Role.POLICY, tokenizer=str(tiny_dir / "tokenizer"), max_model_len=64, plain_weights=False
    )
    try:
        from vllm import _custom_ops as ops

        # every linear layer keeps its plain weight (pushes write there) and runs vLLM's packed kernel, not F.linear
        kernels = plain.llm.collective_rpc(_linear_kernels)[0]
        assert kernels and all(plain_weight and packed is ops._supports_onednn for plain_weight, packed in kernels)
        ys = [c.token_ids for c in plain.generate(PROMPTS, 1, SamplingSettings(max_new_tokens=16, seed=0))]
        before = plain.token_logprobs(PROMPTS, ys)
        want = fresh.token_logprobs(PROMPTS, ys)
        stale = max(abs(a - b) for x, y in zip(before, want, strict=True) for a, b in zip(x, y, strict=True))
        assert stale > 1e-2, "the two models must score differently, or this test could not fail"
        push(plain, load_file(str(other_dir / "model.safetensors")))
        for got, w in zip(plain.token_logprobs(PROMPTS, ys), want, strict=True):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(w), atol=LOGPROB_ATOL, rtol=0)
        push(fresh, original)  # vLLM's layerwise reload into its packed kernels
        for got, w in zip(fresh.token_logprobs(PROMPTS, ys), before, strict=True):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(w), atol=LOGPROB_ATOL, rtol=0)
    finally:
        plain.close()
        fresh.close()
