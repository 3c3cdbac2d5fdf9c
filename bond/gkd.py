"""GKD (Agarwal et al., arXiv 2306.13649): the token-level generalised Jensen-Shannon divergence.

With T the teacher's and S the student's next-token distribution at one position, M = beta T + (1 - beta) S:

    JSD(beta) = beta KL(T || M) + (1 - beta) KL(S || M)          for 0 < beta < 1
    JSD(0)    = KL(T || S)   (forward KL: mode covering)           [the limit of JSD(beta) / beta]
    JSD(1)    = KL(S || T)   (reverse KL: mode seeking)            [the limit of JSD(beta) / (1 - beta)]

(the paper's convention, and TRL's: its beta -> 0 gradient approaches the forward KL's, beta -> 1 the reverse's).
The teacher carries no gradient. The loss is the mean over completion tokens; `masked_jsd_sum` gives the sum,
computed a chunk of positions at a time in (at least) fp32, like bond.objective.sequence_logprobs, so no fp32
copy of all [S, K, V] logits is made at once.
"""

from __future__ import annotations

import math

import torch


def token_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """[...] JSD(beta) per position of student_logits[..., V] (with grad) and teacher_logits[..., V] (no grad)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"token_jsd: beta must be in [0, 1], got {beta}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"token_jsd: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ (same tokenizer and vocabulary needed)"
        )
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_s = torch.log_softmax(student_logits.to(dtype), -1)
    log_t = torch.log_softmax(teacher_logits.detach().to(dtype), -1)
    if beta == 0.0:
        return _kl(log_t, log_s)
    if beta == 1.0:
        return _kl(log_s, log_t)
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1.0 - beta)]), dim=0)
    return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last axis; a zero-probability token of P adds 0 (not 0 * inf)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def masked_jsd_sum(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    chunk_tokens: int = 1024,
) -> torch.Tensor:
    """Sum of JSD(beta) over the positions where mask[S, K] is 1; logits are [S, K, V] (teacher: no gradient)."""
    if student_logits.shape[:2] != mask.shape:
        raise ValueError(
            f"masked_jsd_sum: logits {tuple(student_logits.shape)} and mask {tuple(mask.shape)} do not line up"
        )
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    rows, cols = mask.nonzero(as_tuple=True)
    total = student_logits.new_zeros((), dtype=torch.promote_types(student_logits.dtype, torch.float32))
    for start in range(0, rows.numel(), chunk_tokens):
        r, c = rows[start : start + chunk_tokens], cols[start : start + chunk_tokens]
        weight = mask[r, c].to(total.dtype)
        total = total + (token_jsd(student_logits[r, c], teacher_logits[r, c], beta) * weight).sum()
    return total
