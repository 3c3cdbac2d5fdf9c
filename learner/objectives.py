"""One objective per algorithm: what the learner's step back-propagates for each micro-batch of a rank's share and
the loss terms it reports. The maths is bond/'s; an objective says which log-probs it needs and how its loss splits
over micro-batches.

Policy-gradient losses (J-BOND, BOND, REINFORCE) couple every sequence of the global batch (leave-one-out
baselines), so with more than one micro-batch the loss is first evaluated on no-grad log-probs of the share's
policy samples (the pre-pass) to get d loss / d log pi per sequence; each micro-batch then back-propagates
sum(coefficient * log pi), which by the chain rule accumulates exactly the loss's gradient. The distillation
losses (ReST's SFT, GKD) are sums over sequences or tokens divided by a global count: each micro-batch
back-propagates its own part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bond.config import Algorithm, BondConfig
from bond.gkd import masked_jsd_sum
from bond.objective import LossTerms, best_index, bond_jeffreys_loss, jbond_loss, rloo_kl_loss, sequence_logprobs
from bond.off_policy import importance_weights
from bond.records import Batch, Completion, Role
from bond.sampling_plan import SamplingPlan
from learner import rendezvous
from learner.sequences import Packed
from learner.teacher import Teacher


@dataclass(frozen=True)
class Scored:
    """A rank's share of the step's batch and what was computed of it without gradient, before the update."""

    share: Batch
    micro_prompts: int  # prompts per micro-batch
    packs: list[Packed]  # the policy samples, one pack per micro-batch
    logp_anchor: torch.Tensor  # [S] log pi_anchor(y) of the policy samples
    logp_ref: torch.Tensor  # [S] log pi_ref(y)
    w_target: torch.Tensor | None  # [B] importance weight of each prompt's target group; None: all fresh
    logp_prepass: torch.Tensor | None  # [S] log pi(y) when the objective asked for the pre-pass, else None


@dataclass(frozen=True)
class Part:
    """One micro-batch's contribution."""

    backward: torch.Tensor  # what the micro-batch back-propagates
    loss: float  # its share of a loss that sums over micro-batches (distillation); 0 otherwise
    logp: torch.Tensor  # [s] log pi(y) of its policy samples, detached
    logp_best: torch.Tensor | None  # [b] log pi(y'_best) of its prompts' best target samples, detached


@dataclass(frozen=True)
class Outcome:
    """What a step's statistics read: the loss terms and the log-probs and weights they were evaluated at."""

    terms: LossTerms
    logp: torch.Tensor  # [S] log pi(y) of the share's policy samples, detached
    w_policy: torch.Tensor | None  # [S] importance weight of each policy sample; None: 1


class PolicyGradient:
    """J-BOND, BOND and REINFORCE: a loss of the whole share's log pi(y) (and log pi(y'_best) with an SFT half)."""

    prepass = True  # more than one micro-batch needs the loss's coefficients first
    best_target = True  # the grad forward also holds each prompt's best target sample (the SFT half)

    def __init__(self, bond: BondConfig) -> None:
        self.bond = bond

    def loss(
        self, step: PolicyGradientStep, logp: torch.Tensor, logp_best: torch.Tensor | None, w_policy: torch.Tensor
    ) -> tuple[torch.Tensor, LossTerms]:
        raise NotImplementedError

    def start(self, scored: Scored, policy_version: int) -> PolicyGradientStep:
        share, device = scored.share, scored.logp_anchor.device
        rewards = torch.tensor([[s.reward for s in g] for g in share.policy], dtype=torch.float32, device=device)
        target = torch.tensor([[a.reward for a in g] for g in share.target], dtype=torch.float32, device=device)
        stale = torch.tensor(
            [s.completion.weights_version != policy_version for s in share.policy_samples], device=device
        )  # [b * k], the order of logp
        sampler = [s.completion.sum_logprob for s in share.policy_samples]
        sampler = torch.tensor(sampler, dtype=torch.float64, device=device)
        step = PolicyGradientStep(self, scored, rewards, target.view(len(share.target), -1), stale, sampler)
        if scored.logp_prepass is None:
            return step
        logp = scored.logp_prepass.detach().requires_grad_()
        logp_best = torch.zeros(len(share.policy), dtype=logp.dtype, device=device) if self.best_target else None
        leaves = (logp,) if logp_best is None else (logp, logp_best.requires_grad_())
        loss = step.evaluate(logp, logp_best)[0]
        return step.with_coefficients(torch.autograd.grad(loss, leaves))  # d loss / d log pi per sequence


@dataclass(frozen=True)
class PolicyGradientStep:
    objective: PolicyGradient
    scored: Scored
    r_policy: torch.Tensor  # [b, k]
    r_target: torch.Tensor  # [b, N]
    stale: torch.Tensor  # [b * k] drawn by an older policy (pipelined mode)
    sampler: torch.Tensor  # [b * k] the sampler's log pi(y), float64
    coefficients: tuple[torch.Tensor, ...] = ()  # from the pre-pass; empty: one micro-batch back-propagates the loss

    def with_coefficients(self, coefficients: tuple[torch.Tensor, ...]) -> PolicyGradientStep:
        return PolicyGradientStep(**{**self.__dict__, "coefficients": coefficients})

    def evaluate(
        self, logp: torch.Tensor, logp_best: torch.Tensor | None
    ) -> tuple[torch.Tensor, LossTerms, torch.Tensor]:
        # pi_now(y) / pi_sampler(y) for samples drawn by an older policy (pipelined mode); exactly 1 otherwise
        w = importance_weights(logp, self.sampler.to(logp.dtype), self.stale, self.objective.bond.max_importance_weight)
        return *self.objective.loss(self, logp, logp_best, w), w

    def part(self, i: int, pack: Packed, keep: torch.Tensor, logits: torch.Tensor) -> Part:
        mb, k = self.scored.micro_prompts, self.r_policy.shape[1]
        logps = sequence_logprobs(logits, pack.targets[:, keep], pack.target_mask[:, keep])
        lp, lb = (logps[: mb * k], logps[mb * k :]) if self.objective.best_target else (logps, None)
        if not self.coefficients:
            backward = self.evaluate(lp, lb)[0]
        else:
            backward = (self.coefficients[0][i * mb * k : (i + 1) * mb * k] * lp).sum()
            if lb is not None:
                backward = backward + (self.coefficients[1][i * mb : (i + 1) * mb] * lb).sum()
        return Part(backward, 0.0, lp.detach(), None if lb is None else lb.detach())

    def finish(self, parts: list[Part]) -> Outcome:
        """The statistics: with a pre-pass they read its log pi(y) and the grad passes' log pi(y'_best) (J-BOND's
        forward term is linear in it, so the pre-pass need not score y'_best; tested)."""
        prepass = self.scored.logp_prepass
        logp = prepass.detach() if prepass is not None else torch.cat([p.logp for p in parts])
        logp_best = torch.cat([p.logp_best for p in parts]) if self.objective.best_target else None
        with torch.no_grad():
            _, terms, w = self.evaluate(logp, logp_best)
        return Outcome(terms, logp, w)


class JBond(PolicyGradient):
    def loss(self, step, logp, logp_best, w_policy):
        bond = self.bond
        return jbond_loss(
            logp,
            step.scored.logp_anchor,
            logp_best,
            step.r_policy[:, 0],
            step.r_target,
            bond.beta,
            bond.gamma,
            all_reduce_sum=rendezvous.all_reduce_sum,
            policy_weight=w_policy,
            anchor_weight=step.scored.w_target,
        )


class Bond(PolicyGradient):
    def loss(self, step, logp, logp_best, w_policy):
        # Best-of-n of the anchor (iterated BOND) or of the frozen reference
        logp_target = step.scored.logp_anchor if self.bond.iterated else step.scored.logp_ref
        bond = self.bond
        return bond_jeffreys_loss(
            logp,
            logp_target,
            logp_best,
            step.r_policy[:, 0],
            step.r_target,
            bond.n,
            bond.beta,
            all_reduce_sum=rendezvous.all_reduce_sum,
            policy_weight=w_policy,
            target_weight=step.scored.w_target,
        )


class Rloo(PolicyGradient):
    best_target = False

    def loss(self, step, logp, logp_best, w_policy):
        k = self.bond.rloo_k
        logp_ref = step.scored.logp_ref.view(-1, k)
        return rloo_kl_loss(logp.view(-1, k), logp_ref, step.r_policy, self.bond.beta_rl, w_policy.view(-1, k))


class Distill:
    """ReST's SFT (teacher None): loss = -mean over the batch of log pi(y). GKD: the mean over the policy samples'
    completion tokens of JSD(gkd_beta) between the frozen teacher and pi. Both are sums over sequences (tokens)
    divided by a global count, so each micro-batch back-propagates its own part and the ranks' averaged gradients
    are the global loss's."""

    prepass = best_target = False

    def __init__(self, teacher: Teacher | None, beta: float, world_size: int) -> None:
        self.teacher, self.beta, self.world_size = teacher, beta, world_size

    def start(self, scored: Scored, policy_version: int) -> DistillStep:
        if self.teacher is None:
            return DistillStep(self, 1.0 / scored.share.size)
        # the token mean over the global batch: every rank needs the global token count
        tokens = sum(p.completion_tokens for p in scored.packs)
        total = torch.tensor([float(tokens)], dtype=torch.float64, device=scored.logp_ref.device)
        return DistillStep(self, self.world_size / max(rendezvous.all_reduce_sum(total).item(), 1.0))


@dataclass(frozen=True)
class DistillStep:
    objective: Distill
    scale: float  # 1 / the global count the sum is divided by, times the ranks the gradient is averaged over

    def part(self, i: int, pack: Packed, keep: torch.Tensor, logits: torch.Tensor) -> Part:
        targets, mask, teacher = pack.targets[:, keep], pack.target_mask[:, keep], self.objective.teacher
        if teacher is not None:
            part = masked_jsd_sum(logits, teacher.logits(pack, keep), mask, self.objective.beta)
            logp = sequence_logprobs(logits.detach(), targets, mask)
        else:
            logp = sequence_logprobs(logits, targets, mask)
            part = -logp.sum()
            logp = logp.detach()
        if not part.requires_grad:  # no completion token in this micro-batch: a zero that still back-propagates
            part = logits.sum() * 0.0  # (every rank's backward is a collective under ZeRO)
        return Part(part * self.scale, part.item() * self.scale, logp, None)

    def finish(self, parts: list[Part]) -> Outcome:
        loss = sum(p.loss for p in parts)
        sft = 0.0 if self.objective.teacher is not None else loss
        return Outcome(
            LossTerms(loss, sft, 0.0, 0.0, math.nan, 0.0, math.nan), torch.cat([p.logp for p in parts]), None
        )


Objective = PolicyGradient | Distill


def objective_for(bond: BondConfig, teacher: Teacher | None, world_size: int) -> Objective:
    """The objective of the config's algorithm."""
    if bond.algorithm in (Algorithm.REST, Algorithm.GKD):
        return Distill(teacher if bond.algorithm is Algorithm.GKD else None, bond.gkd_beta, world_size)
    kinds = {Algorithm.JBOND: JBond, Algorithm.BOND: Bond, Algorithm.REINFORCE: Rloo}
    return kinds[bond.algorithm](bond)


def check_batch(batch: Batch, plan: SamplingPlan, bond: BondConfig) -> None:
    """The batch must be what this algorithm samples: another shape would silently change the loss."""
    if batch.size != bond.prompts_per_step:
        raise ValueError(f"Batch has {batch.size} prompts, prompts_per_step is {bond.prompts_per_step}")
    k, n = len(batch.policy[0]), len(batch.target[0])
    if (k, n, batch.target_role) != (plan.policy, plan.target, plan.target_role):
        raise ValueError(
            f"Batch has {_shape(k, n, batch.target_role)} per prompt; {bond.algorithm.value} "
            f"trains on {_shape(plan.policy, plan.target, plan.target_role)}"
        )


def _shape(k: int, n: int, role: Role | None) -> str:
    return f"{k} policy and {n} {role} samples" if role else f"{k} policy samples and no target"


def best_target(batch: Batch, n: int) -> list[Completion]:
    """The Best-of-n sample per prompt: the highest-reward of the first n target samples (ties to the first).
    J-BOND draws exactly n = 2; BOND draws k_quantile >= n, all for the quantiles, the first n for this."""
    groups = [g[:n] for g in batch.target]
    rewards = torch.tensor([[a.reward for a in g] for g in groups])
    return [g[int(j)].completion for g, j in zip(groups, best_index(rewards), strict=True)]
