"""Losses: J-BOND (Algorithm 2), BOND with the Jeffreys divergence, REINFORCE (RLOO) with a KL penalty (GKD's
generalised JSD: bond/gkd.py; ReST's SFT needs no loss of its own here).

Every loss takes per-sequence log-probabilities log pi(y) = sum over completion tokens (see
`sequence_logprobs`), rewards, and returns (scalar surrogate loss, statistics). Terms marked [sg] carry
no gradient. Means are over the batch; for data parallelism pass `all_reduce_sum`, which turns a
local tensor of sums into the global one, so leave-one-out baselines see every prompt of the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bond.bon import bond_reward, mc_quantiles

JBOND_PENALTY = -math.log(16.0)  # r_J(y) when y is worse than both anchor samples

AllReduceSum = Callable[[torch.Tensor], torch.Tensor]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t


def sequence_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor, chunk_tokens: int = 1024
) -> torch.Tensor:
    """log pi(y) per sequence: logits[B, T, V] predict token_ids[B, T]; mask[B, T] is 1 on completion tokens.

    The caller aligns the logits (position t-1's output predicts token t). Padding and prompt tokens
    have mask 0 and contribute nothing. Only masked positions are computed, `chunk_tokens` of them at a
    time, each as logit - logsumexp in (at least) fp32: the fp32 working set is [chunk_tokens, V], never
    a [B, T, V] copy (for V = 150 k, 1024 tokens are 0.6 GB; all of B x T would be tens of GB).
    """
    if logits.shape[:2] != token_ids.shape or token_ids.shape != mask.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, token_ids {tuple(token_ids.shape)} and mask "
            f"{tuple(mask.shape)} do not line up"
        )
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: each sequence's tokens in order
    out = torch.zeros(logits.shape[0], dtype=dtype, device=logits.device)
    for start in range(0, rows.numel(), chunk_tokens):
        r, c = rows[start : start + chunk_tokens], cols[start : start + chunk_tokens]
        chunk = logits[r, c].to(dtype)  # [n, V]
        token_logp = chunk.gather(-1, token_ids[r, c].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(chunk, dim=-1)
        out = out.index_add(0, r, token_logp * mask[r, c].to(dtype))
    return out


def leave_one_out_baseline(x: torch.Tensor, all_reduce_sum: AllReduceSum = _local) -> torch.Tensor:
    """B_i = mean of x over the OTHER elements of the (global) batch; 0 for a batch of one."""
    x = x.detach()
    stats = all_reduce_sum(torch.stack([x.sum(), torch.tensor(float(x.numel()), dtype=x.dtype)]))
    total, count = stats[0], stats[1]
    if count <= 1:
        return torch.zeros_like(x)
    return (total - x) / (count - 1)


def best_index(rewards: torch.Tensor) -> torch.Tensor:
    """Index of the first maximal reward per row of rewards[B, N] (the Best-of-N pick, ties to the first)."""
    return torch.argmax(rewards, dim=-1)  # torch.argmax returns the first maximal index


@dataclass(frozen=True)
class LossTerms:
    """Detached statistics of one loss evaluation (batch means unless said otherwise)."""

    loss: float
    loss_fw: float  # forward-KL (SFT) half; 0 where the loss has none
    loss_bw: float  # backward-KL / policy-gradient half
    loss_reg: float  # KL-to-anchor regulariser
    frac_penalised: float  # J-BOND: fraction with r_J = -log 16


def jbond_reward(policy_reward: torch.Tensor, anchor_rewards: torch.Tensor) -> torch.Tensor:
    """r_J(y) = -log 16 if r(y) < min_j r(y'_j) else 0.  policy_reward[B], anchor_rewards[B, N]."""
    worse = policy_reward < anchor_rewards.min(dim=-1).values
    return torch.where(worse, torch.full_like(policy_reward, JBOND_PENALTY), torch.zeros_like(policy_reward))


def jbond_loss(
    logp_policy: torch.Tensor,  # [B] log pi(y), y ~ pi, with grad
    logp_anchor: torch.Tensor,  # [B] log pi_anchor(y) on the same y [sg]
    logp_best_anchor: torch.Tensor,  # [B] log pi(y'_best), y'_best the better anchor sample, with grad
    policy_reward: torch.Tensor,  # [B] r(x, y)
    anchor_rewards: torch.Tensor,  # [B, N] r(x, y'_j)
    beta: float,
    gamma: float,
    all_reduce_sum: AllReduceSum = _local,
    policy_weight: torch.Tensor | None = None,  # [B] importance weight of y (bond.off_policy) [sg]; None: 1
    anchor_weight: torch.Tensor | None = None,  # [B] importance weight of the anchor pair [sg]; None: 1
) -> tuple[torch.Tensor, LossTerms]:
    """The J-BOND surrogate: (1 - beta) * loss_fw + beta * loss_bw + gamma * loss_reg (docs/algorithm.md section 3).

    Stale samples (pipelined mode): the SFT half is weighted by the pair's weight, the regulariser (a function
    of y only) by y's, the backward half (r_J depends on y and the pair) by their product.
    """
    log_ratio = (logp_policy - logp_anchor).detach()  # log pi(y) - log pi_anchor(y) [sg]
    r_j = jbond_reward(policy_reward, anchor_rewards)
    ret = r_j - log_ratio  # R(y) [sg]
    w_y = 1.0 if policy_weight is None else policy_weight.detach()
    w_a = 1.0 if anchor_weight is None else anchor_weight.detach()
    loss_fw = -(w_a * logp_best_anchor).mean()
    loss_bw = -(w_y * w_a * (ret - leave_one_out_baseline(ret, all_reduce_sum)) * logp_policy).mean()
    loss_reg = (w_y * (log_ratio - leave_one_out_baseline(log_ratio, all_reduce_sum)) * logp_policy).mean()
    loss = (1.0 - beta) * loss_fw + beta * loss_bw + gamma * loss_reg
    terms = LossTerms(
        loss=loss.item(),
        loss_fw=loss_fw.item(),
        loss_bw=loss_bw.item(),
        loss_reg=loss_reg.item(),
        frac_penalised=(r_j < 0).float().mean().item(),
    )
    return loss, terms


def bond_jeffreys_loss(
    logp_policy: torch.Tensor,  # [B] log pi(y), y ~ pi, with grad
    logp_ref: torch.Tensor,  # [B] log pi_ref(y) [sg] (iterated BOND: log pi_anchor(y), the anchor is the reference)
    logp_best_of_n: torch.Tensor,  # [B] log pi(y_BoN), y_BoN the best of n samples of pi_ref, with grad
    policy_reward: torch.Tensor,  # [B] r(x, y)
    ref_rewards: torch.Tensor,  # [B, k] rewards of k samples of pi_ref, for the Monte-Carlo quantiles
    n: int,
    beta: float,
    all_reduce_sum: AllReduceSum = _local,
    policy_weight: torch.Tensor | None = None,  # [B] importance weight of y (bond.off_policy) [sg]; None: 1
    target_weight: torch.Tensor | None = None,  # [B] importance weight of the k target samples [sg]; None: 1
) -> tuple[torch.Tensor, LossTerms]:
    """BOND with the Jeffreys divergence J_beta = (1-beta) KL(pi_BoN||pi) + beta KL(pi||pi_BoN) (docs/algorithm.md 2).

    Stale samples (pipelined mode) as in jbond_loss: the SFT half is weighted by the target group's weight (only
    a moving target, iterated BOND's anchor, can be stale), the backward half by the product of both.

    Backward half: policy gradient with R = r_BOND(y) - 1/(n-1) (log pi(y) - log pi_ref(y)), scaled by
    (n-1), because KL(pi||pi_BoN) = (n-1) E_pi[-r_BOND + (log pi - log pi_ref)/(n-1)] up to a constant.
    p_le is floored at 1/(2k): an unseen-low sample gets a large finite penalty instead of log 0.
    """
    k = ref_rewards.shape[-1]
    p_le, p_lt = mc_quantiles(policy_reward, ref_rewards)
    r_bond = bond_reward(p_le.clamp_min(0.5 / k), p_lt, n)
    log_ratio = (logp_policy - logp_ref).detach()
    ret = r_bond - log_ratio / (n - 1)
    w_y = 1.0 if policy_weight is None else policy_weight.detach()
    w_t = 1.0 if target_weight is None else target_weight.detach()
    loss_fw = -(w_t * logp_best_of_n).mean()
    loss_bw = -(n - 1) * (w_y * w_t * (ret - leave_one_out_baseline(ret, all_reduce_sum)) * logp_policy).mean()
    loss = (1.0 - beta) * loss_fw + beta * loss_bw
    terms = LossTerms(
        loss=loss.item(),
        loss_fw=loss_fw.item(),
        loss_bw=loss_bw.item(),
        loss_reg=0.0,
        frac_penalised=0.0,
    )
    return loss, terms


def rloo_kl_loss(
    logp_policy: torch.Tensor,  # [B, k] log pi(y_ij), k samples of pi per prompt, with grad
    logp_ref: torch.Tensor,  # [B, k] log pi_ref(y_ij) [sg]
    policy_reward: torch.Tensor,  # [B, k] r(x_i, y_ij)
    beta_rl: float,
    policy_weight: torch.Tensor | None = None,  # [B, k] importance weight of y_ij (bond.off_policy) [sg]; None: 1
) -> tuple[torch.Tensor, LossTerms]:
    """REINFORCE with a KL penalty and the RLOO baseline (docs/algorithm.md section 4; Kool et al. 2019):
    R_ij = r_ij - beta_rl (log pi(y_ij) - log pi_ref(y_ij)) [sg], baselined by the mean R of the prompt's
    other k-1 samples, loss = -mean_ij (R_ij - B_ij) log pi(y_ij). The baseline never looks at another prompt,
    so it needs no all-reduce: a prompt's k samples always sit on one rank."""
    if logp_policy.dim() != 2 or logp_policy.shape[1] < 2:
        raise ValueError(f"rloo_kl_loss: needs [B, k >= 2] samples, got {tuple(logp_policy.shape)}")
    if logp_ref.shape != logp_policy.shape or policy_reward.shape != logp_policy.shape:
        raise ValueError(
            f"rloo_kl_loss: shapes differ: {tuple(logp_policy.shape)}, {tuple(logp_ref.shape)}, "
            f"{tuple(policy_reward.shape)}"
        )
    k = logp_policy.shape[1]
    log_ratio = (logp_policy - logp_ref).detach()
    ret = policy_reward - beta_rl * log_ratio
    baseline = (ret.sum(-1, keepdim=True) - ret) / (k - 1)
    w_y = 1.0 if policy_weight is None else policy_weight.detach()
    loss = -(w_y * (ret - baseline) * logp_policy).mean()
    terms = LossTerms(
        loss=loss.item(),
        loss_fw=0.0,
        loss_bw=loss.item(),
        loss_reg=0.0,
        frac_penalised=0.0,
    )
    return loss, terms
