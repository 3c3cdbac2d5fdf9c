"""The learner on one GPU: ZeRO-3 bf16 J-BOND steps and the bucketed gather on a ~0.47 B-parameter Llama.

The model is randomly initialised from a realistic config (hidden 1024, 24 layers, vocab 32000), so
this measures the machinery, not learning. Prints step time, peak memory and tokens/s.
Run on a GPU machine: `pytest -m gpu tests/gpu/test_learner_gpu.py -s`.
"""

from __future__ import annotations

import math
import random
import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bond.config import BondConfig
from bond.records import Batch, Completion, Role, ScoredCompletion
from cluster.runtime.ports import free_port
from learner.config import Device, Dtype, LearnerConfig
from learner.learner import Learner

pytestmark = pytest.mark.gpu

VOCAB, PROMPT, COMPLETION, PROMPTS = 32000, 64, 128, 16


def _batch(seed: int) -> Batch:
    rng = random.Random(seed)

    def sample(i: int, role: Role) -> ScoredCompletion:
        prompt = tuple(rng.randrange(3, VOCAB) for _ in range(PROMPT))
        tokens = tuple(rng.randrange(3, VOCAB) for _ in range(rng.randint(COMPLETION // 2, COMPLETION)))
        c = Completion(
            prompt_id=i,
            prompt="x",
            prompt_token_ids=prompt,
            token_ids=tokens,
            text="y",
            logprobs=(-1.0,) * len(tokens),
            role=role,
            weights_version=seed,
        )
        return ScoredCompletion(c, rng.random(), "rm")

    return Batch(
        policy=tuple((sample(i, Role.POLICY),) for i in range(PROMPTS)),
        target=tuple((sample(i, Role.ANCHOR), sample(i, Role.ANCHOR)) for i in range(PROMPTS)),
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    out = tmp_path_factory.mktemp("llama-0.5b")
    model.save_pretrained(out, safe_serialization=True)
    print(f"\nrandom Llama: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters")
    return out


def test_zero3_bf16_step_and_bucketed_gather(model_dir):
    bucket_bytes = 256 << 20
    bond = BondConfig(prompts_per_step=PROMPTS, lr=1e-5, warmup_steps=0, gamma=0.5)
    config = LearnerConfig(
        zero_stage=3, micro_batch_prompts=4, dtype=Dtype.BF16, device=Device.CUDA, bucket_bytes=bucket_bytes
    )
    learner = Learner(model_dir, bond, config, master_port=free_port())
    before = {k: v.cpu() for k, v in next(iter(learner.weights(Role.POLICY))).tensors.items()}
    torch.cuda.reset_peak_memory_stats()
    stats = [learner.step(_batch(0))]  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    stats += [learner.step(_batch(s)) for s in range(1, 4)]
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / 3
    tokens = sum(s.tokens for s in stats[1:]) / 3
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"ZeRO-3 bf16 step: {seconds:.2f} s, {tokens / seconds:.0f} completion tokens/s "
        f"({tokens:.0f} per step), peak memory {peak:.2f} GiB"
    )
    assert all(math.isfinite(s.loss) and math.isfinite(s.grad_norm) for s in stats)
    assert stats[-1].policy_version == 4 and stats[-1].kl_ref != 0.0

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    sizes, total, first = [], 0, None
    for update in learner.weights(Role.POLICY):
        first = first or {k: v.cpu() for k, v in update.tensors.items()}  # off the GPU: not counted
        sizes.append(update.num_bytes)
        total += update.num_bytes
        del update
    torch.cuda.synchronize()
    gather_s = time.perf_counter() - t0
    extra = (torch.cuda.max_memory_allocated() - base) / 2**20
    print(
        f"bucketed gather: {total / 2**30:.2f} GiB in {len(sizes)} buckets in {gather_s:.2f} s "
        f"({total / gather_s / 2**30:.1f} GiB/s), peak extra memory {extra:.0f} MiB"
    )
    assert max(sizes) <= bucket_bytes
    assert extra < 3 * bucket_bytes / 2**20  # one bucket (gathered + copied) at a time, never the whole model
    assert any(not torch.equal(first[k], before[k]) for k in before)  # the policy moved
