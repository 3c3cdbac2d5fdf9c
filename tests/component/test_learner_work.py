"""What the learner computes per step: each phase's forwards counted, and the bf16 reference's accuracy bound."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from bond.config import BondConfig
from bond.objective import jbond_loss
from bond.records import Role
from learner.config import Dtype
from tests.component.test_learner import learner, make_batch

BOND = BondConfig(prompts_per_step=8, lr=1e-2, warmup_steps=0, gamma=0.5, eta=0.1)
# bf16 keeps 8 bits of mantissa. The error depends on the CPU's bf16 kernels (docs/learner.md has the figures of
# two machines: a step's kl_ref was off by up to 0.038 nats). Bound: 0.06 nats per token of each sequence and 0.05
# on a mean over sequences, while a wrong model (pi instead of pi_ref after a few steps) is off by far more.
BF16_TOKEN_ATOL, BF16_MEAN_ATOL = 0.06, 0.05


def _which(lrn) -> str:
    """Whose weights the policy's storage holds now (swapped in for a no-grad pass, or the policy's own)."""
    local = lrn.engine.local(lrn._params[0])
    if torch.equal(local, lrn._anchor.tensors[0]):
        return "anchor"
    if torch.equal(local, lrn._reference.tensors[0]):
        return "reference"
    return "policy"


def _count_forwards(lrn, batch) -> Counter:
    """(model, grad) -> sequences scored in one step."""
    seen: Counter = Counter()
    forward = lrn.engine.forward

    def counting(input_ids, attention_mask, keep):
        seen[_which(lrn), torch.is_grad_enabled()] += input_ids.shape[0]
        return forward(input_ids, attention_mask, keep)

    lrn.engine.forward = counting
    try:
        lrn.step(batch)
    finally:
        lrn.engine.forward = forward
    return seen


@pytest.mark.parametrize("micro_batch_prompts", [8, 4])
def test_each_sequence_is_scored_once_per_model(tiny_dir, micro_batch_prompts):
    lrn = learner(tiny_dir, BOND, zero_stage=0, micro_batch_prompts=micro_batch_prompts)
    lrn.step(make_batch(0))  # now policy, anchor and reference all differ, so a forward's model is identifiable
    seen = _count_forwards(lrn, make_batch(1))
    B = BOND.prompts_per_step
    want = Counter(
        {
            ("anchor", False): B,
            ("reference", False): B,  # log pi_anchor(y), log pi_ref(y): once each
            ("policy", True): 2 * B,
        }
    )  # log pi(y) and log pi(y'_best), with grad
    if micro_batch_prompts < B:  # gradient accumulation: one no-grad pass of pi over y (not y'_best)
        want["policy", False] = B
    assert seen == want


def test_jbond_coefficient_of_the_best_anchor_term_does_not_depend_on_its_values():
    """Why the learner's no-grad pre-pass may skip log pi(y'_best) (learner.step)."""
    gen = torch.Generator().manual_seed(0)
    logp, logp_anchor = -torch.rand(6, generator=gen) * 5, -torch.rand(6, generator=gen) * 5
    r, r_anchor = torch.rand(6, generator=gen), torch.rand(6, 2, generator=gen)
    grads = []
    for values in (torch.zeros(6), -torch.rand(6, generator=gen) * 9):
        best = values.clone().requires_grad_()
        loss, _ = jbond_loss(logp, logp_anchor, best, r, r_anchor, beta=0.5, gamma=0.5)
        grads.append(torch.autograd.grad(loss, best)[0])
    assert torch.equal(grads[0], grads[1])


def test_bf16_reference_logprobs_within_the_stated_bound(tiny_dir):
    fp32 = learner(tiny_dir, BOND, zero_stage=0, micro_batch_prompts=8)
    bf16 = learner(tiny_dir, BOND, zero_stage=0, micro_batch_prompts=8, reference_dtype=Dtype.BF16)
    completions = [s.completion for seed in range(4) for s in make_batch(seed).policy_samples]
    exact = fp32.logprobs(completions, Role.REFERENCE)
    packs = [bf16._scorer.pack(completions[i : i + 8]) for i in range(0, len(completions), 8)]
    approx = bf16._scorer.reference_logprobs(packs)
    tokens = torch.tensor([max(1, len(c.token_ids)) for c in completions], dtype=torch.float32)
    err = (approx - exact).abs()
    assert (err / tokens).max() <= BF16_TOKEN_ATOL and (approx - exact).mean().abs() <= BF16_MEAN_ATOL, (
        f"bf16 log pi_ref off by {(err / tokens).max():.4f} nats/token, mean {(approx - exact).mean():.4f} nats"
    )
    assert err.max() > 0  # it did run in bf16
    # a step with either reference trains identically (pi_ref enters J-BOND only through kl_ref) ...
    a, b = fp32.step(make_batch(7)), bf16.step(make_batch(7))
    assert a.loss == b.loss and a.grad_norm == b.grad_norm
    assert abs(a.kl_ref - b.kl_ref) <= BF16_MEAN_ATOL
    with pytest.raises(ValueError, match="reference_dtype"):
        learner(tiny_dir, BOND, zero_stage=3, reference_dtype=Dtype.BF16)
