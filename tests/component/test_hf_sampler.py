"""HfSampler (the reference and fallback sampler) and SamplingSettings, without vLLM."""

from __future__ import annotations

import pytest
import torch

from actors.hf_sampler import HfSampler
from actors.sampling import Sampler, SamplingSettings
from bond.config import ConfigError
from bond.records import Role, WeightUpdate
from demo.review_grammar import PROMPTS


@pytest.fixture(scope="module")
def sampler(tiny_dir):
    return HfSampler(str(tiny_dir / "policy"), Role.ANCHOR, initial_version=3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ["."]}, "stop"),
        ({"seed": -2}, "seed"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ],
)
def test_settings_name_the_bad_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        SamplingSettings(**kwargs)


def test_derived_seeds_differ():
    s = SamplingSettings(seed=1)
    seeds = {s.sample_seed(i, j) for i in range(20) for j in range(20)}
    assert len(seeds) == 400 and all(0 <= x < 2**31 for x in seeds)
    assert SamplingSettings().sample_seed(0, 0) is None


def test_is_a_sampler(sampler):
    assert isinstance(sampler, Sampler)
    assert sampler.role is Role.ANCHOR and sampler.weights_version == 3


def test_logprobs_are_a_forward_pass(sampler):
    got = sampler.generate(PROMPTS[:5], 3, SamplingSettings(seed=2, max_new_tokens=20), prompt_ids=range(10, 15))
    assert [c.prompt_id for c in got] == [10 + i for i in range(5) for _ in range(3)]
    assert all(c.role is Role.ANCHOR and c.weights_version == 3 for c in got)
    assert len({c.token_ids for c in got[:3]}) > 1 or len({c.token_ids for c in got[3:6]}) > 1
    # generate() batches with left padding; token_logprobs() runs each sequence alone: same numbers in fp32.
    for c, ref in zip(got, sampler.token_logprobs([c.prompt for c in got], [c.token_ids for c in got]), strict=True):
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(ref), atol=1e-4, rtol=0)
        assert c.finish_reason == ("stop" if c.token_ids[-1] == 2 else "length")
    again = sampler.generate(PROMPTS[:5], 3, SamplingSettings(seed=2, max_new_tokens=20), prompt_ids=range(10, 15))
    assert [c.token_ids for c in again] == [c.token_ids for c in got]


def test_stop_string_ends_the_text(sampler):
    got = sampler.generate(["the movie"], 4, SamplingSettings(seed=0, stop=("was",), max_new_tokens=20))
    for c in got:
        assert "was" not in c.text
        if c.finish_reason == "stop" and c.token_ids[-1] != 2:
            assert sampler.tokenizer.decode(c.token_ids).strip().endswith("was")


def test_bucketed_update_and_refusals(tiny_dir):
    s = HfSampler(str(tiny_dir / "policy"), Role.POLICY)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=16)
    before = [c.token_ids for c in s.generate(PROMPTS, 1, greedy)]
    head = s.model.lm_head.weight.detach().clone()
    with pytest.raises(ValueError, match=r"'lm_head.weight' has shape \(3, 128\), the model expects \(58, 128\)"):
        s.load_weights(WeightUpdate(Role.POLICY, 1, {"lm_head.weight": head[:3]}))
    with pytest.raises(ValueError, match="unknown parameter 'lm_head.bias'"):
        s.load_weights(WeightUpdate(Role.POLICY, 1, {"lm_head.bias": head[0]}))
    assert s.load_weights(WeightUpdate(Role.POLICY, 1, {"lm_head.weight": -head}, last_bucket=False)) == 0
    assert [c.token_ids for c in s.generate(PROMPTS, 1, greedy)] == before
    norm = s.model.model.norm.weight.detach().clone()
    assert s.load_weights(WeightUpdate(Role.POLICY, 1, {"model.norm.weight": norm}, bucket=1)) == 1
    assert torch.equal(s.model.lm_head.weight, -head)
    assert [c.token_ids for c in s.generate(PROMPTS, 1, greedy)] != before
    assert all(c.weights_version == 1 for c in s.generate(PROMPTS[:2], 1, greedy))


def test_bad_inputs(sampler):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        sampler.generate([""], 1, SamplingSettings())
    with pytest.raises(ValueError, match="context is 64"):
        sampler.generate([" ".join(["the"] * 64)], 1, SamplingSettings())
    with pytest.raises(ValueError, match="n "):
        sampler.generate(["the movie"], -1, SamplingSettings())
    with pytest.raises(ValueError, match="2 prompt_ids for 1 prompts"):
        sampler.generate(["the movie"], 1, SamplingSettings(), prompt_ids=[1, 2])
    near = sampler.generate([" ".join(["the"] * 60)], 2, SamplingSettings(seed=1, max_new_tokens=32))
    assert all(len(c.token_ids) <= 3 for c in near)


def test_staging_fused_layers_and_bucket_versions():
    """Without a host copy, part of a fused layer is refused; a newer push replaces a half-received one."""
    from actors.weight_staging import ParamSpec, WeightStaging

    names = [f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkvo"]
    specs = {n: ParamSpec((2, 2), torch.float32) for n in names}
    fused = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    t = torch.ones(2, 2)
    bare = WeightStaging(specs, Role.POLICY, 0, fused=fused)
    with pytest.raises(ValueError, match=r"fused with \['model.layers.0.self_attn.k_proj.weight'"):
        bare.stage(WeightUpdate(Role.POLICY, 1, {names[0]: t}))
    assert list(bare.stage(WeightUpdate(Role.POLICY, 1, {names[3]: t}))) == [names[3]]  # o_proj stands alone
    held = WeightStaging(specs, Role.POLICY, 0, fused=fused, host_weights={n: torch.zeros(2, 2) for n in names})
    assert held.stage(WeightUpdate(Role.POLICY, 1, {names[0]: t}, last_bucket=False)) is None
    out = held.stage(WeightUpdate(Role.POLICY, 2, {names[1]: t}))  # version 2's bucket 0 drops version 1's
    assert list(out) == names[:3] and torch.equal(out[names[0]], torch.zeros(2, 2))
    held.applied(out, 2)
    assert held.version == 2 and torch.equal(held.host_weights[names[1]], t)
    held.stage(WeightUpdate(Role.POLICY, 4, {names[3]: t}, last_bucket=False))
    with pytest.raises(ValueError, match="version 3 arrived while version 4 was half received"):
        held.stage(WeightUpdate(Role.POLICY, 3, {names[3]: t}))
