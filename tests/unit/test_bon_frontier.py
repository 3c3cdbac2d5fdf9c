"""bond.bon_frontier against exact enumeration: effective N inverts the Best-of-N KL bound, and the Best-of-N gap
is 0 for an exact Best-of-N policy, negative for a worse one, positive for the KL-optimal exponential tilt."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bond.bon import bon_probs, kl_bound, kl_divergence
from bond.bon_frontier import bon_gap, effective_n

MAX_N = 16


@pytest.fixture(scope="module")
def world():
    """A uniform reference over 4000 items with distinct rewards: the KL bound is tight to ~1e-6 here."""
    gen = torch.Generator().manual_seed(0)
    ref = torch.full((4000,), 1 / 4000, dtype=torch.float64)
    rewards = torch.randn(4000, generator=gen, dtype=torch.float64)
    curve_kl = [kl_bound(n) for n in range(1, MAX_N + 1)]
    curve_reward = [float(bon_probs(ref, rewards, n) @ rewards) for n in range(1, MAX_N + 1)]
    return ref, rewards, curve_kl, curve_reward


def gap_of(policy, world):
    ref, rewards, curve_kl, curve_reward = world
    return bon_gap(float(policy @ rewards), kl_divergence(policy, ref).item(), curve_kl, curve_reward)


@pytest.mark.parametrize("n", [1, 2, 5, 11, MAX_N])
def test_an_exact_best_of_n_policy_sits_on_the_curve_at_its_n(n, world):
    ref, rewards = world[:2]
    policy = bon_probs(ref, rewards, n)
    assert gap_of(policy, world) == pytest.approx(0.0, abs=1e-5)
    assert effective_n(kl_divergence(policy, ref).item()) == pytest.approx(n, rel=1e-5)


def test_a_mixture_of_the_reference_and_best_of_16_falls_below_the_curve(world):
    ref, rewards = world[:2]
    assert gap_of(0.5 * ref + 0.5 * bon_probs(ref, rewards, 16), world) < -0.01


def test_a_policy_on_middling_rewards_pays_kl_for_nothing(world):
    ref, rewards = world[:2]
    near_median = ref * torch.exp(-((rewards - rewards.median()) ** 2) / 0.1)
    policy = near_median / near_median.sum()
    assert 0.1 < kl_divergence(policy, ref).item() < world[2][-1]
    assert gap_of(policy, world) < -0.3


def test_the_exponential_tilt_beats_best_of_n_at_its_kl(world):
    """exp(r)-tilting maximises reward at a given KL: the gap is positive, so its sign tells policies apart."""
    ref, rewards = world[:2]
    tilted = ref * torch.exp(rewards)
    assert gap_of(tilted / tilted.sum(), world) > 0.05


def test_gap_edges():
    kls, rewards = [0.0, kl_bound(2), kl_bound(3)], [0.0, 1.0, 1.5]
    assert bon_gap(0.0, -0.2, kls, rewards) == 0.0  # a noisy negative KL reads the curve at the reference
    assert bon_gap(1.0, kl_bound(2), kls, rewards) == pytest.approx(0.0)
    midway = (kl_bound(2) + kl_bound(3)) / 2
    assert bon_gap(1.0, midway, kls, rewards) == pytest.approx(-0.25)  # linear in KL between integer n
    assert math.isnan(bon_gap(2.0, kl_bound(3) + 1e-3, kls, rewards))  # beyond the curve: unknown, no extrapolation
    assert math.isnan(bon_gap(2.0, math.nan, kls, rewards))
    with pytest.raises(ValueError, match="must be equal"):
        bon_gap(0.0, 0.1, kls, rewards[:2])


def test_effective_n_edges():
    assert effective_n(0.0) == 1.0 and effective_n(-0.3) == 1.0
    assert math.isnan(effective_n(math.nan))
    assert effective_n(kl_bound(1_000_000)) == pytest.approx(1_000_000, rel=1e-9)
    assert effective_n(1000.0) == math.inf and effective_n(math.inf) == math.inf  # a diverged run: no overflow


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.floats(min_value=1.0, max_value=1e9, allow_nan=False))
def test_effective_n_inverts_the_bound_for_real_n(n):
    kl = math.log(n) - (n - 1) / n
    assert effective_n(kl) == pytest.approx(n, rel=1e-6)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.floats(min_value=-1.0, max_value=30.0), st.floats(min_value=-1.0, max_value=30.0))
def test_effective_n_is_monotone(a, b):
    lo, hi = sorted((a, b))
    assert 1.0 <= effective_n(lo) <= effective_n(hi)
