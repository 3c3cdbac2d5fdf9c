"""Off-policy correction of stale samples (pipelined mode): truncated sequence-level importance weights.

In pipelined mode the actors sample step t with weights some versions older than the learner's. The losses
are expectations under the *current* pi (policy samples) and the *current* pi_anchor (anchor samples), so a
sample y drawn from an older version v is reweighted by w(y) = pi_now(y) / pi_v(y), with log pi_v(y) the
sampler's recorded per-token log-probabilities (Completion.logprobs) and log pi_now(y) the learner's forward.
A fresh sample (v = the learner's version) gets exactly w = 1, so synchronous mode is unchanged bit for bit.

Weights are truncated at `cap` (IMPALA's rho-bar): a sequence-level ratio is a product over tokens and can be
huge; truncation trades a small bias (towards the old sampler) for bounded variance.

The J-BOND pair: y'_best and r_J(y) are functions of the PAIR (y'_1, y'_2) of anchor samples, drawn i.i.d.,
so the pair's weight is the product w(y'_1) w(y'_2) (exact for any function of the pair), truncated once.
"""

from __future__ import annotations

import torch


def importance_weights(
    logp_now: torch.Tensor, logp_sampler: torch.Tensor, stale: torch.Tensor, cap: float
) -> torch.Tensor:
    """min(cap, exp(sum_j (logp_now - logp_sampler)[..., j])) where `stale`, else exactly 1; no gradient.

    logp_now, logp_sampler: [B] or [B, N] sequence log-probabilities (nats); stale: bool, same shape. A trailing
    N axis is a group of i.i.d. samples whose joint weight is the product (see the module docstring).
    """
    if logp_now.shape != logp_sampler.shape or logp_now.shape != stale.shape:
        raise ValueError(
            f"importance_weights: shapes {tuple(logp_now.shape)}, {tuple(logp_sampler.shape)} and "
            f"{tuple(stale.shape)} differ"
        )
    if not cap >= 1.0:
        raise ValueError(f"importance_weights: cap must be >= 1 (1 keeps only down-weighting), got {cap}")
    log_w = torch.where(stale, logp_now.detach().double() - logp_sampler.double(), torch.zeros((), dtype=torch.double))
    if log_w.dim() == 2:
        log_w = log_w.sum(-1)
    return log_w.exp().clamp(max=cap).to(logp_now.dtype)
