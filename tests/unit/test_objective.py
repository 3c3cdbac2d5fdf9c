"""Losses against slow literal per-sample implementations and exact expectations on an enumerable toy."""

import itertools
import math

import pytest
import torch

from bond.bon import bon_probs, bond_reward, kl_divergence
from bond.objective import (
    JBOND_PENALTY,
    best_index,
    bond_jeffreys_loss,
    jbond_loss,
    jbond_reward,
    leave_one_out_baseline,
    rloo_kl_loss,
    sequence_logprobs,
)

pytestmark = pytest.mark.usefixtures("float64_by_default")


def test_sequence_logprobs_literal():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)
    ids = torch.randint(0, 7, (3, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    got = sequence_logprobs(logits, ids, mask)
    for b in range(3):
        literal = 0.0
        for t in range(5):
            if mask[b, t]:
                row = logits[b, t].tolist()
                literal += row[ids[b, t]] - math.log(sum(math.exp(v) for v in row))
        assert got[b].item() == pytest.approx(literal, rel=1e-6)


@pytest.mark.parametrize("chunk_tokens", [1, 3, 1024])
def test_sequence_logprobs_chunked_equals_full_log_softmax_fp32_value_and_gradient(chunk_tokens):
    """The chunked computation over masked positions only == the full [B, T, V] fp32 log-softmax, and so is
    its gradient (in fp32, the learner's precision)."""
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(4, 9, 50, generator=g, dtype=torch.float32)).requires_grad_()
    ids = torch.randint(0, 50, (4, 9), generator=g)
    mask = (torch.rand(4, 9, generator=g) > 0.4).long()
    mask[2] = 0  # a sequence with no completion token: log pi = 0, no gradient
    full = (logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask).sum(-1)
    got = sequence_logprobs(logits, ids, mask, chunk_tokens=chunk_tokens)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-6)
    weights = torch.tensor([0.3, -1.0, 2.0, 0.7])
    (g_full,) = torch.autograd.grad((weights * full).sum(), logits)
    (g_got,) = torch.autograd.grad((weights * got).sum(), logits)
    torch.testing.assert_close(g_got, g_full, atol=1e-6, rtol=1e-6)
    assert got[2].item() == 0.0 and g_got[2].abs().max().item() == 0.0


def test_leave_one_out_literal():
    x = torch.tensor([1.0, 4.0, -2.0, 7.0])
    expected = [sum(x[j].item() for j in range(4) if j != i) / 3 for i in range(4)]
    assert leave_one_out_baseline(x).tolist() == pytest.approx(expected)
    assert leave_one_out_baseline(torch.tensor([3.0])).tolist() == [0.0]


def test_leave_one_out_with_an_all_reduce_sees_the_global_batch():
    x = torch.tensor([1.0, 4.0, -2.0, 7.0])
    half_a, half_b = x[:2], x[2:]

    def fake_two_rank_sum(other):
        return lambda local: local + torch.stack([other.sum(), torch.tensor(float(other.numel()))])

    got = torch.cat(
        [
            leave_one_out_baseline(half_a, fake_two_rank_sum(half_b)),
            leave_one_out_baseline(half_b, fake_two_rank_sum(half_a)),
        ]
    )
    torch.testing.assert_close(got, leave_one_out_baseline(x))


def test_jbond_reward_values():
    policy = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.5])
    anchors = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 3.0], [0.5, 0.5]])
    expected = [JBOND_PENALTY, 0.0, 0.0, 0.0, 0.0]  # only strictly worse than BOTH is penalised
    assert jbond_reward(policy, anchors).tolist() == pytest.approx(expected)
    assert JBOND_PENALTY == pytest.approx(-math.log(16))


def test_best_index_takes_the_first_of_ties():
    assert best_index(torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, -1.0]])).tolist() == [0, 1, 0]


def literal_jbond(logp_pol, logp_anc, logp_best, r_pol, r_anc, beta, gamma):
    """The J-BOND loss written one sample at a time, straight from docs/algorithm.md section 3."""
    B = len(logp_pol)
    returns, ratios = [], []
    for i in range(B):
        worse = r_pol[i].item() < min(r_anc[i].tolist())
        r_j = -math.log(16) if worse else 0.0
        ratio = (logp_pol[i] - logp_anc[i]).item()
        returns.append(r_j - ratio)
        ratios.append(ratio)
    total = 0
    for i in range(B):
        base_r = sum(returns[j] for j in range(B) if j != i) / (B - 1)
        base_k = sum(ratios[j] for j in range(B) if j != i) / (B - 1)
        fw = -logp_best[i]
        bw = -(returns[i] - base_r) * logp_pol[i]
        reg = (ratios[i] - base_k) * logp_pol[i]
        total = total + ((1 - beta) * fw + beta * bw + gamma * reg) / B
    return total


def tabular_logps(logits, ids):
    return torch.log_softmax(logits, -1)[ids]


@pytest.mark.parametrize("beta,gamma", [(0.5, 0.0), (0.3, 1.0), (1.0, 2.0), (0.0, 0.5)])
def test_jbond_gradient_equals_literal(beta, gamma):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, generator=g, requires_grad=True)
    anchor_logits = torch.randn(6, generator=g)
    y = torch.randint(0, 6, (5,), generator=g)
    y_anchor = torch.randint(0, 6, (5, 2), generator=g)
    rewards = torch.randint(0, 3, (6,), generator=g).double()
    r_pol, r_anc = rewards[y], rewards[y_anchor]
    best = y_anchor[torch.arange(5), best_index(r_anc)]

    def grads(loss_fn):
        logp = torch.log_softmax(logits, -1)
        loss = loss_fn(logp[y], torch.log_softmax(anchor_logits, -1)[y], logp[best], r_pol, r_anc, beta, gamma)
        loss = loss[0] if isinstance(loss, tuple) else loss
        return torch.autograd.grad(loss, logits)[0], loss.item()

    (g_fast, l_fast), (g_slow, l_slow) = grads(jbond_loss), grads(literal_jbond)
    assert l_fast == pytest.approx(l_slow, rel=1e-10)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-10, atol=1e-12)


def literal_rloo(logp, logp_ref, r, beta_rl):
    """RLOO written one sample at a time: each sample's baseline is the mean return of its prompt's others."""
    B, k = r.shape
    rets = [[r[i, j].item() - beta_rl * (logp[i, j] - logp_ref[i, j]).item() for j in range(k)] for i in range(B)]
    total = 0
    for i in range(B):
        for j in range(k):
            base = sum(rets[i][m] for m in range(k) if m != j) / (k - 1)
            total = total - (rets[i][j] - base) * logp[i, j] / (B * k)
    return total


def test_rloo_gradient_equals_literal():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, generator=g, requires_grad=True)
    ref = torch.log_softmax(torch.randn(5, generator=g), -1)
    y = torch.randint(0, 5, (4, 3), generator=g)
    r = torch.randn(5, generator=g)[y]
    fast = rloo_kl_loss(torch.log_softmax(logits, -1)[y], ref[y], r, 0.1)[0]
    slow = literal_rloo(torch.log_softmax(logits, -1)[y], ref[y], r, 0.1)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-10)
    torch.testing.assert_close(torch.autograd.grad(fast, logits)[0], torch.autograd.grad(slow, logits)[0])


def test_rloo_refuses_a_single_sample_per_prompt():
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_kl_loss(torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4, 1), 0.1)


def literal_bond(logp, logp_ref, logp_best, r, ref_rewards, n, beta):
    B, k = ref_rewards.shape
    rets = []
    for i in range(B):
        le = max(sum(1 for v in ref_rewards[i].tolist() if v <= r[i].item()) / k, 0.5 / k)
        lt = sum(1 for v in ref_rewards[i].tolist() if v < r[i].item()) / k
        r_bond = math.log(le) + math.log(sum((lt / le) ** (j - 1) for j in range(1, n + 1))) / (n - 1)
        rets.append(r_bond - (logp[i] - logp_ref[i]).item() / (n - 1))
    total = 0
    for i in range(B):
        base = sum(rets[j] for j in range(B) if j != i) / (B - 1)
        total = total + ((1 - beta) * -logp_best[i] + beta * -(n - 1) * (rets[i] - base) * logp[i]) / B
    return total


def test_bond_jeffreys_gradient_equals_literal():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, generator=g, requires_grad=True)
    ref = torch.log_softmax(torch.randn(6, generator=g), -1)
    rewards = torch.randint(0, 4, (6,), generator=g).double()
    y = torch.randint(0, 6, (4,), generator=g)
    ref_draws = torch.randint(0, 6, (4, 16), generator=g)
    best = torch.randint(0, 6, (4,), generator=g)

    def args():
        logp = torch.log_softmax(logits, -1)
        return logp[y], ref[y], logp[best], rewards[y], rewards[ref_draws], 4, 0.5

    fast, slow = bond_jeffreys_loss(*args())[0], literal_bond(*args())
    assert fast.item() == pytest.approx(slow.item(), rel=1e-10)
    torch.testing.assert_close(torch.autograd.grad(fast, logits)[0], torch.autograd.grad(slow, logits)[0])


def exact_expected_jbond_grad(logits, anchor_probs, rewards, B, beta, gamma):
    """E over every batch of B policy samples and 2B anchor samples of grad(jbond_loss), by enumeration."""
    K = len(rewards)
    pi = torch.softmax(logits, -1).detach()
    total = torch.zeros_like(logits)
    for ys in itertools.product(range(K), repeat=B):
        p_ys = math.prod(pi[y].item() for y in ys)
        for anchors in itertools.product(itertools.product(range(K), repeat=2), repeat=B):
            p = p_ys * math.prod(anchor_probs[a].item() * anchor_probs[b].item() for a, b in anchors)
            y, ya = torch.tensor(ys), torch.tensor(anchors)
            r_anc = rewards[ya]
            best = ya[torch.arange(B), best_index(r_anc)]
            logp = torch.log_softmax(logits, -1)
            loss, _ = jbond_loss(logp[y], torch.log(anchor_probs)[y], logp[best], rewards[y], r_anc, beta, gamma)
            total += p * torch.autograd.grad(loss, logits)[0]
    return total


@pytest.mark.parametrize("beta,gamma", [(0.5, 0.0), (0.5, 1.0), (1.0, 0.0)])
def test_expected_jbond_gradient_is_the_gradient_of_its_objective(beta, gamma):
    """The leave-one-out baseline is unbiased: the expected J-BOND gradient equals the exact gradient of
    (1-beta) CE(Bo2(anchor), pi) + beta (KL(pi||anchor) - E_pi[rbar]) + gamma KL(pi||anchor),
    where rbar(y) = -log16 * P(y worse than both anchor samples) = -log16 * (1 - p_le_anchor(y))^2."""
    K, B = 3, 2
    logits = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    anchor = torch.tensor([0.5, 0.3, 0.2])
    rewards = torch.tensor([0.0, 1.0, 1.0])  # with a tie
    expected = exact_expected_jbond_grad(logits, anchor, rewards, B, beta, gamma)

    pi = torch.softmax(logits, -1)
    p_le = torch.stack([anchor[rewards <= rewards[i]].sum() for i in range(K)])
    r_bar = JBOND_PENALTY * (1 - p_le) ** 2
    kl = kl_divergence(pi, anchor)
    objective = (
        -(1 - beta) * (bon_probs(anchor, rewards, 2) * torch.log(pi)).sum()
        + beta * (kl - (pi * r_bar).sum())
        + gamma * kl
    )
    torch.testing.assert_close(expected, torch.autograd.grad(objective, logits)[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("B,k", [(1, 3), (2, 2)])
def test_expected_rloo_gradient_is_unbiased(B, k):
    """Over every draw of B prompts x k samples, the RLOO gradient's expectation is exactly the gradient of
    -(E_pi[r] - beta_rl KL(pi || ref)): the prompt's other samples make an unbiased baseline."""
    K, beta_rl = 3, 0.2
    logits = torch.tensor([0.2, -0.1, 0.4], requires_grad=True)
    ref = torch.tensor([0.2, 0.5, 0.3])
    rewards = torch.tensor([1.0, -0.5, 0.25])
    pi = torch.softmax(logits, -1).detach()
    total = torch.zeros(K)
    for ys in itertools.product(range(K), repeat=B * k):
        y = torch.tensor(ys).view(B, k)
        loss, _ = rloo_kl_loss(torch.log_softmax(logits, -1)[y], torch.log(ref)[y], rewards[y], beta_rl)
        total += math.prod(pi[i].item() for i in ys) * torch.autograd.grad(loss, logits)[0]
    p = torch.softmax(logits, -1)
    objective = -((p * rewards).sum() - beta_rl * kl_divergence(p, ref))
    torch.testing.assert_close(total, torch.autograd.grad(objective, logits)[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta", [0.5, 0.0, 1.0])
def test_expected_bond_gradient_by_enumeration(beta):
    """Every batch of B = 2 policy samples, each with k = 2 reference samples, enumerated with its probability.
    The Best-of-n sample is the best of the first n = 2 reference samples, so the forward half's expectation is
    the gradient of the cross-entropy to the exact Bo-2 distribution; the backward half's is the gradient of
    KL(pi || ref) - (n-1) E_pi[rbar], where rbar(y) is r_BOND of the Monte-Carlo quantiles averaged over the
    k reference draws (the estimator's own target: log p_le is not unbiased in k, so this is what it
    distils; with exact quantiles rbar is the log density ratio of test_bon)."""
    K, B, k, n = 3, 2, 2, 2
    logits = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    ref = torch.tensor([0.5, 0.3, 0.2])
    rewards = torch.tensor([0.0, 1.0, 1.0])  # with a tie
    pi = torch.softmax(logits, -1).detach()
    draws = list(itertools.product(range(K), repeat=k))
    expected = torch.zeros(K)
    for ys in itertools.product(range(K), repeat=B):
        p_ys = math.prod(pi[y].item() for y in ys)
        for refs in itertools.product(draws, repeat=B):
            p = p_ys * math.prod(ref[a].item() for d in refs for a in d)
            y, yr = torch.tensor(ys), torch.tensor(refs)
            best = yr[torch.arange(B), best_index(rewards[yr][:, :n])]
            logp = torch.log_softmax(logits, -1)
            loss, _ = bond_jeffreys_loss(logp[y], torch.log(ref)[y], logp[best], rewards[y], rewards[yr], n, beta)
            expected += p * torch.autograd.grad(loss, logits)[0]

    def r_bond_mc(i: int) -> float:  # E over k reference draws of r_BOND(p_le_hat, p_lt_hat), floored as the loss
        total = 0.0
        for d in draws:
            r_ref = rewards[list(d)]
            le = max((r_ref <= rewards[i]).double().mean().item(), 0.5 / k)
            lt = (r_ref < rewards[i]).double().mean().item()
            total += math.prod(ref[a].item() for a in d) * bond_reward(torch.tensor(le), torch.tensor(lt), n).item()
        return total

    r_bar = torch.tensor([r_bond_mc(i) for i in range(K)])
    p = torch.softmax(logits, -1)
    objective = -(1 - beta) * (bon_probs(ref, rewards, n) * torch.log(p)).sum() + beta * (
        kl_divergence(p, ref) - (n - 1) * (p * r_bar).sum()
    )
    torch.testing.assert_close(expected, torch.autograd.grad(objective, logits)[0], rtol=1e-9, atol=1e-12)
