"""Best-of-N: its exact distribution, Monte-Carlo quantiles and the BOND reward (docs/algorithm.md sections 1-2).

Ties are handled exactly: the Best-of-N sample is the *first* of the N draws with the highest reward,
so y wins at draw i iff the i-1 earlier draws are strictly worse and the N-i later ones are not better:

    pi_BoN(y) = pi_ref(y) * sum_{i=1..N} p_lt(y)^(i-1) * p_le(y)^(N-i)
              = pi_ref(y) * p_le(y)^(N-1) * sum_{i=1..N} (p_lt(y)/p_le(y))^(i-1)
"""

from __future__ import annotations

import math

import torch


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")


def reward_quantiles(ref_probs: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact p_le(y) = P_ref[r(y') <= r(y)] and p_lt(y) = P_ref[r(y') < r(y)] on an enumerable support [K]."""
    if ref_probs.shape != rewards.shape or ref_probs.dim() != 1:
        raise ValueError(f"ref_probs {tuple(ref_probs.shape)} and rewards {tuple(rewards.shape)} must be equal 1-D")
    sorted_rewards, order = torch.sort(rewards)
    cdf = torch.cumsum(ref_probs[order], 0)  # cdf[j] = P_ref[r <= sorted_rewards[j]]
    cdf = torch.cat([cdf.new_zeros(1), cdf])
    n_le = torch.searchsorted(sorted_rewards, rewards, right=True)  # how many rewards are <= r(y)
    n_lt = torch.searchsorted(sorted_rewards, rewards, right=False)  # how many are < r(y)
    return cdf[n_le], cdf[n_lt]


def tie_sum(p_le: torch.Tensor, p_lt: torch.Tensor, n: int) -> torch.Tensor:
    """sum_{i=1..n} p_lt^(i-1) * p_le^(n-i)  (= n * p^(n-1) without ties). Elementwise."""
    _check_n(n)
    return sum(p_lt ** (i - 1) * p_le ** (n - i) for i in range(1, n + 1))


def bon_probs(ref_probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """The exact Best-of-n distribution over an enumerable support (1-D tensors of equal length K)."""
    p_le, p_lt = reward_quantiles(ref_probs, rewards)
    return ref_probs * tie_sum(p_le, p_lt, n)


def mc_quantiles(reward: torch.Tensor, ref_rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo p_le, p_lt of reward[B] against k reference samples ref_rewards[B, k].

    p_le_hat(y) = (1/k) sum_j 1{r(y_j) <= r(y)},  p_lt_hat(y) = (1/k) sum_j 1{r(y_j) < r(y)}.
    """
    if reward.dim() != 1 or ref_rewards.dim() != 2 or ref_rewards.shape[0] != reward.shape[0]:
        raise ValueError(
            f"reward must be [B] and ref_rewards [B, k]; got {tuple(reward.shape)}, {tuple(ref_rewards.shape)}"
        )
    r = reward.unsqueeze(-1)
    dtype = reward.dtype if reward.is_floating_point() else torch.get_default_dtype()
    return (ref_rewards <= r).to(dtype).mean(-1), (ref_rewards < r).to(dtype).mean(-1)


def bond_reward(p_le: torch.Tensor, p_lt: torch.Tensor, n: int) -> torch.Tensor:
    """r_BOND(y) = log p_le(y) + 1/(n-1) * log sum_{i=1..n} (p_lt(y)/p_le(y))^(i-1), tie-aware.

    Computed as log p_le + 1/(n-1) * log(tie_sum / p_le^(n-1)) in log space. Needs p_le > 0.
    """
    _check_n(n)
    if n < 2:
        raise ValueError("bond_reward needs n >= 2 (Best-of-1 is the reference itself)")
    if bool((p_le <= 0).any()):
        raise ValueError("bond_reward: p_le must be > 0 (floor Monte-Carlo estimates before calling)")
    ratio = p_lt / p_le
    log_sum = torch.log(sum(ratio ** (i - 1) for i in range(1, n + 1)))
    return torch.log(p_le) + log_sum / (n - 1)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of two distributions over the same enumerable support, 0 log 0 = 0."""
    mask = p > 0
    return (p[mask] * (torch.log(p[mask]) - torch.log(q[mask]))).sum()


def kl_bound(n: int) -> float:
    """log n - (n-1)/n: KL(pi_BoN || pi_ref) for continuous rewards, an upper bound with ties (section 1)."""
    _check_n(n)
    return math.log(n) - (n - 1) / n
