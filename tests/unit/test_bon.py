"""Best-of-N maths against brute-force enumeration of all n-tuples and the paper's closed forms."""

import itertools
import math

import pytest
import torch

from bond.bon import (
    bon_probs,
    bond_reward,
    kl_bound,
    kl_divergence,
    mc_quantiles,
    reward_quantiles,
)

pytestmark = pytest.mark.usefixtures("float64_by_default")


def brute_force_bon(ref: list[float], rewards: list[float], n: int) -> list[float]:
    """Enumerate every n-tuple of draws; the winner is the first draw with the highest reward."""
    out = [0.0] * len(ref)
    for draws in itertools.product(range(len(ref)), repeat=n):
        prob = math.prod(ref[i] for i in draws)
        best = max(rewards[i] for i in draws)
        winner = next(i for i in draws if rewards[i] == best)
        out[winner] += prob
    return out


def toy(k: int, seed: int, ties: bool):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(k, generator=g) + 0.1
    ref = ref / ref.sum()
    rewards = torch.randint(0, 3, (k,), generator=g).double() if ties else torch.randn(k, generator=g)
    return ref, rewards


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_bon_probs_equal_brute_force(n, ties):
    ref, rewards = toy(6, seed=n, ties=ties)
    expected = torch.tensor(brute_force_bon(ref.tolist(), rewards.tolist(), n))
    got = bon_probs(ref, rewards, n)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_best_of_2_twice_is_best_of_4(ties):
    ref, rewards = toy(7, seed=11, ties=ties)
    twice = bon_probs(bon_probs(ref, rewards, 2), rewards, 2)
    torch.testing.assert_close(twice, bon_probs(ref, rewards, 4), rtol=1e-12, atol=1e-14)
    # and M times Best-of-2 is Best-of-2^M
    p = ref
    for _ in range(3):
        p = bon_probs(p, rewards, 2)
    torch.testing.assert_close(p, bon_probs(ref, rewards, 8), rtol=1e-12, atol=1e-14)


def fine_continuous_toy(k: int = 20_000):
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(k, generator=g) + 0.5
    return ref / ref.sum(), torch.randn(k, generator=g)  # distinct rewards: continuous in the limit


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_kl_bon_ref_matches_log_n_minus_n_minus_1_over_n(n):
    ref, rewards = fine_continuous_toy()
    kl = kl_divergence(bon_probs(ref, rewards, n), ref).item()
    assert kl == pytest.approx(math.log(n) - (n - 1) / n, abs=2e-3)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_kl_with_ties_is_below_the_bound(n):
    ref, rewards = toy(9, seed=5, ties=True)
    assert kl_divergence(bon_probs(ref, rewards, n), ref).item() < math.log(n) - (n - 1) / n


@pytest.mark.parametrize("n", [2, 4, 8])
def test_expected_quantile_and_log_quantile_under_bon(n):
    ref, rewards = fine_continuous_toy()
    bon = bon_probs(ref, rewards, n)
    p_le, _ = reward_quantiles(ref, rewards)
    assert (bon * p_le).sum().item() == pytest.approx(n / (n + 1), abs=1e-3)
    assert (bon * torch.log(p_le)).sum().item() == pytest.approx(-1 / n, abs=2e-3)


def test_mc_quantiles_equal_literal_counts():
    g = torch.Generator().manual_seed(1)
    reward = torch.randint(0, 4, (5,), generator=g).double()
    ref_rewards = torch.randint(0, 4, (5, 16), generator=g).double()
    p_le, p_lt = mc_quantiles(reward, ref_rewards)
    for b in range(5):
        le = sum(1 for r in ref_rewards[b].tolist() if r <= reward[b].item()) / 16
        lt = sum(1 for r in ref_rewards[b].tolist() if r < reward[b].item()) / 16
        assert p_le[b].item() == le and p_lt[b].item() == lt


def test_mc_quantiles_converge_to_exact_quantiles():
    ref, rewards = toy(5, seed=3, ties=True)
    g = torch.Generator().manual_seed(2)
    draws = rewards[torch.multinomial(ref, 200_000, replacement=True, generator=g)]
    p_le, p_lt = mc_quantiles(rewards, draws.expand(5, -1))
    exact_le, exact_lt = reward_quantiles(ref, rewards)
    torch.testing.assert_close(p_le, exact_le, atol=5e-3, rtol=0)
    torch.testing.assert_close(p_lt, exact_lt, atol=5e-3, rtol=0)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_bond_reward_is_the_log_density_ratio(n, ties):
    """r_BOND(y) = log(pi_BoN(y) / pi_ref(y)) / (n - 1): the reward whose KL-regularised optimum is pi_BoN."""
    ref, rewards = toy(6, seed=7 + n, ties=ties)
    p_le, p_lt = reward_quantiles(ref, rewards)
    expected = (torch.log(bon_probs(ref, rewards, n)) - torch.log(ref)) / (n - 1)
    torch.testing.assert_close(bond_reward(p_le, p_lt, n), expected, rtol=1e-10, atol=1e-12)


def test_bond_reward_literal_formula():
    p_le, p_lt = torch.tensor([0.5, 0.25, 1.0]), torch.tensor([0.25, 0.0, 0.5])
    n = 4
    for i in range(3):
        le, lt = p_le[i].item(), p_lt[i].item()
        literal = math.log(le) + math.log(sum((lt / le) ** (j - 1) for j in range(1, n + 1))) / (n - 1)
        assert bond_reward(p_le, p_lt, n)[i].item() == pytest.approx(literal, rel=1e-12)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="n must be"):
        bon_probs(torch.ones(2) / 2, torch.zeros(2), 0)
    with pytest.raises(ValueError, match="p_le must be > 0"):
        bond_reward(torch.zeros(1), torch.zeros(1), 2)
    with pytest.raises(ValueError, match="equal 1-D"):
        bon_probs(torch.ones(2) / 2, torch.zeros(3), 2)


def test_kl_bound_literal_and_equal_to_the_exact_kl():
    assert kl_bound(1) == 0.0 and kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    ref, rewards = fine_continuous_toy()
    assert kl_bound(4) == pytest.approx(kl_divergence(bon_probs(ref, rewards, 4), ref).item(), abs=2e-3)
