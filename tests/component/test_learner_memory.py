"""Learner memory knobs on the tied-embedding Qwen2 (conftest.tied_qwen2_dir): log-probs only at completion
positions (same values and gradients as the full-vocabulary computation), gradient checkpointing (same
update, and really active), a tied model's export and EMA anchor (the anchor stays tied by construction)."""

from __future__ import annotations

import dataclasses
import functools
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from bond.config import BondConfig
from bond.records import Batch, Completion, Role, ScoredCompletion
from cluster.runtime.ports import free_port
from learner.config import LearnerConfig
from learner.learner import Learner
from learner.sequences import completion_logprobs, pack

VOCAB = 58
BOND = BondConfig(prompts_per_step=4, lr=1e-2, warmup_steps=0, gamma=0.5, eta=0.1, max_grad_norm=1.0)
_port = functools.cache(free_port)  # one per test process: the default process group is created once and reused


def _completions(seed: int, n: int, role: Role = Role.POLICY, min_prompt: int = 0) -> list[Completion]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = tuple([1] + [rng.randrange(5, VOCAB) for _ in range(rng.randint(min_prompt, 6))])
        tokens = tuple(rng.randrange(2, VOCAB) for _ in range(rng.randint(0, 8)))
        out.append(
            Completion(
                prompt_id=i,
                prompt="x",
                prompt_token_ids=prompt,
                token_ids=tokens,
                text="y",
                logprobs=(-1.0,) * len(tokens),
                role=role,
                weights_version=0,
            )
        )
    return out


def _batch(seed: int) -> Batch:
    rng = random.Random(seed)
    policy = _completions(seed, 4)
    anchor = [dataclasses.replace(c, prompt_id=j // 2) for j, c in enumerate(_completions(seed + 100, 8, Role.ANCHOR))]
    return Batch(
        policy=tuple((ScoredCompletion(c, rng.random(), "rm"),) for c in policy),
        target=tuple(
            tuple(ScoredCompletion(c, rng.choice([0.2, 0.5]), "rm") for c in anchor[2 * i : 2 * i + 2])
            for i in range(4)
        ),
    )


def test_completion_positions_only_equal_full_logits_value_and_gradient(tied_qwen2_dir):
    model = AutoModelForCausalLM.from_pretrained(tied_qwen2_dir, dtype=torch.float32).eval()
    packed = pack(_completions(3, 6, min_prompt=2), pad_id=0, device=torch.device("cpu"))
    assert packed.logit_positions.numel() < packed.targets.shape[1]  # the prompt-only prefix is skipped

    def forward(ids, attn, keep):
        return model(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=keep).logits

    got = completion_logprobs(forward, packed)
    logits = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask, use_cache=False).logits
    full = (
        logits[:, :-1].float().log_softmax(-1).gather(-1, packed.targets.unsqueeze(-1)).squeeze(-1) * packed.target_mask
    ).sum(-1)
    torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-6)
    params = [p for p in model.parameters()]
    g_got = torch.autograd.grad(got.sum(), params)
    g_full = torch.autograd.grad(full.sum(), params)
    for a, b in zip(g_got, g_full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("zero_stage", [0, 3])
def test_gradient_checkpointing_gives_the_same_update_and_recomputes(tied_qwen2_dir, zero_stage):
    runs = {}
    for checkpointing in (False, True):
        lrn = Learner(
            tied_qwen2_dir,
            BOND,
            LearnerConfig(zero_stage=zero_stage, micro_batch_prompts=2, gradient_checkpointing=checkpointing),
            master_port=_port(),
        )
        calls = []
        mlp = next(m for name, m in lrn.engine.module.named_modules() if name.endswith("layers.0.mlp"))
        # a pre-hook: the recompute stops early once the last saved tensor is rebuilt, before forward hooks run
        hook = mlp.register_forward_pre_hook(lambda *_, c=calls: c.append(torch.is_grad_enabled()))
        stats = lrn.step(_batch(0))
        hook.remove()
        state = {k: v for u in lrn.weights(Role.POLICY) for k, v in u.tensors.items()}
        runs[checkpointing] = (stats, state, calls)
    (plain, p_state, p_calls), (ckpt, c_state, c_calls) = runs[False], runs[True]
    for field in ("loss", "loss_fw", "loss_bw", "kl_ref", "kl_anchor", "grad_norm"):
        assert getattr(ckpt, field) == pytest.approx(getattr(plain, field), rel=1e-6, abs=1e-7), field
    assert max((c_state[k] - p_state[k]).abs().max().item() for k in p_state) < 1e-6
    # with-grad forwards of layer 0's MLP: one per micro-batch without, two (forward + recompute) with
    assert sum(c_calls) == 2 * sum(p_calls) > 0


def test_tied_model_exports_tied_and_its_anchor_stays_tied(tied_qwen2_dir, tmp_path):
    lrn = Learner(tied_qwen2_dir, BOND, LearnerConfig(zero_stage=3, micro_batch_prompts=4), master_port=_port())
    for s in range(2):
        lrn.step(_batch(s))
    names = {k for u in lrn.weights(Role.ANCHOR) for k in u.tensors}
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names  # one tensor for both
    lrn.export_hf(tmp_path / "hf")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert exported.config.tie_word_embeddings and exported.lm_head.weight is exported.model.embed_tokens.weight
    probe = _completions(7, 5)
    forward = lambda ids, attn, keep: (  # noqa: E731
        exported(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=keep).logits
    )
    packed = pack(probe, 0, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(lrn.logprobs(probe), completion_logprobs(forward, packed), atol=1e-5, rtol=0)
        # the anchor as a model: load its (tied) state; the head must be the anchor's embedding, not the policy's
        anchor = {k: v for u in lrn.weights(Role.ANCHOR) for k, v in u.tensors.items()}
        exported.load_state_dict(anchor, strict=False)
        assert exported.lm_head.weight is exported.model.embed_tokens.weight
        torch.testing.assert_close(
            lrn.logprobs(probe, Role.ANCHOR), completion_logprobs(forward, packed), atol=1e-5, rtol=0
        )
