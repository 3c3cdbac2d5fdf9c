"""The learner treats stale samples as bond/off_policy.py states: a sample drawn by an older version is weighted
by min(cap, pi_now(y) / pi_sampler(y)) from its recorded log-probabilities (the anchor pair by the product of its
two ratios under the CURRENT anchor); a fresh sample's weight is exactly 1 and costs no extra forward."""

from __future__ import annotations

import dataclasses
import math
import random

import torch

from bond.records import Batch, Role, ScoredCompletion
from tests.component.test_learner import BOND, learner, make_batch


def with_sampler_logprobs(scored: ScoredCompletion, version: int, total: float) -> ScoredCompletion:
    """The same sample, tagged with the weights version that drew it and a recorded log pi_sampler(y) = total."""
    c = scored.completion
    per_token = (total / len(c.token_ids),) * len(c.token_ids) if c.token_ids else ()
    return dataclasses.replace(scored, completion=dataclasses.replace(c, weights_version=version, logprobs=per_token))


def test_stale_samples_are_importance_weighted_and_fresh_ones_are_not(tiny_dir):
    bond = dataclasses.replace(BOND, max_importance_weight=1.5)
    lrn = learner(tiny_dir, bond=bond, micro_batch_prompts=4)  # two micro-batches: the accumulation path
    lrn.step(make_batch(0))  # now at version 1
    rng = random.Random(7)
    base = make_batch(1)
    now_policy = lrn.logprobs([s.completion for s in base.policy_samples], Role.POLICY).double()
    flat_anchor = [a.completion for g in base.target for a in g]
    now_anchor = lrn.logprobs(flat_anchor, Role.ANCHOR).double().view(base.size, 2)
    # recorded sampler log-probs: the current ones shifted by up to +-1 nat, so weights land on both sides of the cap
    d_pol = [rng.uniform(-1, 1) if s.completion.token_ids else 0.0 for s in base.policy_samples]
    d_anc = [[rng.uniform(-1, 1) if a.completion.token_ids else 0.0 for a in g] for g in base.target]
    stale = Batch(
        policy=tuple(
            (with_sampler_logprobs(s, 0, now_policy[i].item() + d_pol[i]),) for i, s in enumerate(base.policy_samples)
        ),
        target=tuple(
            tuple(with_sampler_logprobs(a, 0, now_anchor[i, j].item() + d_anc[i][j]) for j, a in enumerate(g))
            for i, g in enumerate(base.target)
        ),
    )
    stats = lrn.step(stale)
    w_pol = [min(1.5, math.exp(-d)) for d in d_pol]
    w_anc = [min(1.5, math.exp(-sum(d))) for d in d_anc]
    assert abs(stats.importance_weight_policy - sum(w_pol) / len(w_pol)) < 1e-5
    assert abs(stats.importance_weight_anchor - sum(w_anc) / len(w_anc)) < 1e-5
    assert 1.5 in [round(w, 12) for w in w_pol + w_anc] and min(w_pol + w_anc) < 1.0  # both sides exercised

    fresh = make_batch(2)  # make_batch tags samples with version = seed = the learner's version now
    assert {s.completion.weights_version for s in fresh.policy_samples} == {lrn.policy_version}
    stats = lrn.step(fresh)
    assert stats.importance_weight_policy == 1.0 and stats.importance_weight_anchor == 1.0


def test_fresh_samples_give_the_unweighted_update(tiny_dir):
    """Sync mode is untouched: fresh samples with arbitrary recorded log-probs step exactly like any others."""
    a, b = learner(tiny_dir), learner(tiny_dir)
    batch = make_batch(0)
    shifted = Batch(
        policy=tuple((with_sampler_logprobs(s, 0, -123.0),) for s in batch.policy_samples), target=batch.target
    )
    sa, sb = a.step(batch), b.step(shifted)
    assert sa.loss == sb.loss and sa.grad_norm == sb.grad_norm
    wa = {k: v for u in a.weights(Role.POLICY) for k, v in u.tensors.items()}
    wb = {k: v for u in b.weights(Role.POLICY) for k, v in u.tensors.items()}
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
