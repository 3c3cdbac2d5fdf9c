"""Stale samples (pipelined mode) are importance-weighted as bond/off_policy.py states: literal weights, the
weighted J-BOND and REINFORCE losses against per-sample sums, and unbiasedness on an enumerable toy."""

import itertools
import math

import pytest
import torch

from bond.objective import jbond_loss, rloo_kl_loss
from bond.off_policy import importance_weights

pytestmark = pytest.mark.usefixtures("float64_by_default")


def test_weights_are_truncated_ratios_and_exactly_one_when_fresh():
    now = torch.tensor([-3.0, -2.0, -5.0, -1.0])
    sampler = torch.tensor([-2.5, -4.0, -5.0, -1.7])
    stale = torch.tensor([True, True, False, True])
    got = importance_weights(now, sampler, stale, cap=1.5)
    literal = [min(1.5, math.exp(-3.0 + 2.5)), 1.5, 1.0, min(1.5, math.exp(-1.0 + 1.7))]
    assert got.tolist() == pytest.approx(literal, rel=1e-12)
    assert got[2].item() == 1.0  # fresh: exactly one, whatever the sampler recorded


def test_pair_weight_is_the_product_truncated_once():
    now = torch.tensor([[-1.0, -2.0], [-3.0, -3.0]])
    sampler = torch.tensor([[-1.2, -2.5], [-2.0, -3.5]])
    stale = torch.tensor([[True, True], [True, False]])
    got = importance_weights(now, sampler, stale, cap=10.0)
    assert got.tolist() == pytest.approx([math.exp(0.2) * math.exp(0.5), math.exp(-1.0)], rel=1e-12)
    assert importance_weights(now, sampler, stale, cap=1.2)[0].item() == pytest.approx(1.2)


def test_bad_shapes_and_cap_are_refused():
    with pytest.raises(ValueError, match="shapes"):
        importance_weights(torch.zeros(3), torch.zeros(2), torch.zeros(3, dtype=torch.bool), 2.0)
    with pytest.raises(ValueError, match="cap"):
        importance_weights(torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.bool), 0.5)


def test_weighted_jbond_loss_and_gradient_match_the_literal_sums():
    g = torch.Generator().manual_seed(3)
    B = 5
    logp = torch.randn(B, generator=g).requires_grad_()
    logp_best = torch.randn(B, generator=g).requires_grad_()
    logp_anchor, r_pol, r_anc = torch.randn(B, generator=g), torch.randn(B, generator=g), torch.randn(B, 2, generator=g)
    w_y, w_a = torch.rand(B, generator=g) * 2, torch.rand(B, generator=g) * 2
    beta, gamma = 0.5, 0.7
    loss, terms = jbond_loss(
        logp, logp_anchor, logp_best, r_pol, r_anc, beta, gamma, policy_weight=w_y, anchor_weight=w_a
    )
    lr = (logp - logp_anchor).detach()
    r_j = torch.where(r_pol < r_anc.min(-1).values, -math.log(16.0), 0.0)
    ret = r_j - lr
    fw = bw = reg = 0.0
    for i in range(B):
        b_ret = (ret.sum() - ret[i]) / (B - 1)
        b_lr = (lr.sum() - lr[i]) / (B - 1)
        fw += -w_a[i] * logp_best[i] / B
        bw += -w_y[i] * w_a[i] * (ret[i] - b_ret) * logp[i] / B
        reg += w_y[i] * (lr[i] - b_lr) * logp[i] / B
    literal = (1 - beta) * fw + beta * bw + gamma * reg
    assert loss.item() == pytest.approx(literal.item(), rel=1e-12)
    assert terms.loss_fw == pytest.approx(fw.item()) and terms.loss_reg == pytest.approx(reg.item())
    got = torch.autograd.grad(loss, (logp, logp_best))
    want = torch.autograd.grad(literal, (logp, logp_best))
    assert all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(got, want, strict=True))


def test_unit_weights_change_nothing_bit_for_bit():
    g = torch.Generator().manual_seed(4)
    args = [torch.randn(6, generator=g) for _ in range(4)] + [torch.randn(6, 2, generator=g)]
    plain, _ = jbond_loss(*args, 0.5, 1.0)
    ones, _ = jbond_loss(*args, 0.5, 1.0, policy_weight=torch.ones(6), anchor_weight=torch.ones(6))
    assert torch.equal(plain, ones)
    grouped = [a.view(3, 2) for a in (args[0], args[1], args[3])]  # RLOO: 3 prompts x 2 samples
    rf_plain, _ = rloo_kl_loss(*grouped, 0.1)
    rf_ones, _ = rloo_kl_loss(*grouped, 0.1, policy_weight=torch.ones(3, 2))
    assert torch.equal(rf_plain, rf_ones)


def test_weighted_stale_gradient_equals_the_on_policy_gradient_in_expectation():
    """Enumerable toy: a categorical pi_theta over K completions, k = 2 i.i.d. samples of one prompt per step
    (RLOO's leave-one-out baseline couples them). E over y ~ pi_old of the importance-weighted REINFORCE gradient
    (no truncation) equals E over y ~ pi_theta of the on-policy gradient, exactly."""
    K, beta_rl = 4, 0.3
    theta = torch.tensor([0.3, -0.2, 0.5, 0.1], requires_grad=True)
    old = torch.log_softmax(torch.tensor([0.0, 0.4, -0.3, 0.2]), -1)  # the stale sampler's weights
    ref = torch.log_softmax(torch.tensor([0.1, 0.0, 0.2, -0.1]), -1)
    reward = torch.tensor([1.0, -0.5, 2.0, 0.3])

    def expected_gradient(sampler_logp: torch.Tensor, weighted: bool) -> torch.Tensor:
        total = torch.zeros(K)
        for ys in itertools.product(range(K), repeat=2):
            y = torch.tensor(ys)
            logp = torch.log_softmax(theta, -1)[y]
            w = (
                importance_weights(logp, sampler_logp[y], torch.ones(2, dtype=torch.bool), cap=1e9)
                if weighted
                else None
            )
            loss, _ = rloo_kl_loss(
                logp.view(1, 2),
                ref[y].view(1, 2),
                reward[y].view(1, 2),
                beta_rl,
                policy_weight=None if w is None else w.view(1, 2),
            )
            (grad,) = torch.autograd.grad(loss, theta)
            total += sampler_logp[y].sum().exp() * grad
        return total

    on_policy = expected_gradient(torch.log_softmax(theta, -1).detach(), weighted=False)
    off_policy = expected_gradient(old, weighted=True)
    assert torch.allclose(off_policy, on_policy, atol=1e-12)
    unweighted = expected_gradient(old, weighted=False)
    assert not torch.allclose(unweighted, on_policy, atol=1e-3)  # the bias the weights remove
