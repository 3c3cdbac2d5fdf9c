"""Estimators of KL(pi || ref) on samples of pi, and the Best-of-N curve's E[max of N] from M >= N samples.

KL(pi || ref) of two autoregressive models is E_{y~pi} sum_t KL_t, where KL_t is the per-token KL between
the two next-token distributions at the prefix (x, y_<t). Three estimators, each unbiased (per sequence,
summed over its completion tokens, with r_t = ref(y_t | prefix) / pi(y_t | prefix)):

- `sampled` (k1): sum_t -log r_t = log pi(y) - log ref(y). The one every method's training stats use;
  its variance grows with the KL itself (it is a log-ratio of two whole-sequence probabilities).
- `k3`: sum_t (r_t - 1) - log r_t. Each term is >= 0, and E[r_t - 1 | prefix] = 0, so it adds a zero-mean
  control variate to k1 (Schulman's k3); lower variance while pi is close to ref, heavier tails far away.
- `tokenwise`: sum_t KL_t, the exact KL of the next-token distributions at the sampled prefixes (needs both
  models' full logits). It integrates the token y_t out analytically (a Rao-Blackwellisation of k1), so
  its variance is at most k1's. The evaluation reports k1 for every method, and this one beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KlEstimates:
    """Per-sequence estimates of KL(pi || ref) [S] each, in nats (sums over completion tokens)."""

    sampled: torch.Tensor  # k1: log pi(y) - log ref(y)
    k3: torch.Tensor  # sum_t (r_t - 1) - log r_t
    tokenwise: torch.Tensor  # sum_t KL(pi(. | prefix) || ref(. | prefix))


def kl_estimates(
    logits_pi: torch.Tensor, logits_ref: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor
) -> KlEstimates:
    """All three estimators from both models' logits[S, T, V] (aligned: position t predicts token_ids[:, t]);
    mask[S, T] is 1 on completion tokens. Computed in (at least) fp32; padding contributes nothing."""
    if logits_pi.shape != logits_ref.shape or logits_pi.shape[:2] != token_ids.shape or token_ids.shape != mask.shape:
        raise ValueError(
            f"logits {tuple(logits_pi.shape)} / {tuple(logits_ref.shape)}, token_ids "
            f"{tuple(token_ids.shape)} and mask {tuple(mask.shape)} do not line up"
        )
    dtype = torch.promote_types(logits_pi.dtype, torch.float32)
    log_pi = torch.log_softmax(logits_pi.to(dtype), -1)
    log_ref = torch.log_softmax(logits_ref.to(dtype), -1)
    m = mask.to(dtype)
    index = token_ids.unsqueeze(-1)
    log_r = (log_ref.gather(-1, index) - log_pi.gather(-1, index)).squeeze(-1)  # log ref(y_t) - log pi(y_t)
    full = (log_pi.exp() * (log_pi - log_ref)).sum(-1)
    return KlEstimates(
        sampled=(-log_r * m).sum(-1), k3=((torch.expm1(log_r) - log_r) * m).sum(-1), tokenwise=(full * m).sum(-1)
    )


def expected_max_of_n(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased estimate of E[max of n iid draws] from the M >= n iid draws rewards[..., M] (per row).

    The U-statistic: the mean of max over all C(M, n) subsets of size n. Sorted ascending, r_(i) is the
    maximum of exactly C(i-1, n-1) of them, so the estimate is sum_i C(i-1, n-1) / C(M, n) * r_(i).
    Weights are formed in log space (lgamma): C(128, 64) overflows nothing this way.
    """
    m = rewards.shape[-1]
    if not 1 <= n <= m:
        raise ValueError(f"expected_max_of_n: need 1 <= n <= M = {m}, got n = {n}")
    values = torch.sort(rewards.to(torch.float64), dim=-1).values
    i = torch.arange(1, m + 1, dtype=torch.float64)
    ok = i >= n
    k = (i - 1).clamp_min(n - 1)  # C(i-1, n-1) is 0 below i = n; clamped only to keep lgamma finite there

    def log_choose(a, b):
        return torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)

    log_w = log_choose(k, torch.tensor(float(n - 1), dtype=torch.float64)) - log_choose(
        torch.tensor(float(m), dtype=torch.float64), torch.tensor(float(n), dtype=torch.float64)
    )
    weights = torch.where(ok, log_w.exp(), torch.zeros_like(log_w))
    return (values * weights).sum(-1)
