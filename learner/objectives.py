"""One objective per algorithm: which log-probs it needs, what each micro-batch of a rank's share back-propagates and
the loss terms it reports, by bond/'s maths (docs/learner.md: the pre-pass of the policy-gradient losses)."""

from __future__ import annotations

import dataclasses
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

    # each subclass: loss(step, logp, logp_best, w_policy) -> (loss, LossTerms), by bond.objective

    def __init__(self, bond: BondConfig) -> None:
        self.bond = bond

    def start(self, scored: Scored, policy_version: int) -> PolicyGradientStep:
        share, device = scored.share, scored.logp_anchor.device
        rewards = torch.tensor([[s.reward for s in g] for g in share.policy], dtype=torch.float32, device=device)
        target = torch.tensor([[a.reward for a in g] for g in share.target], dtype=torch.float32, device=device)
        samples = [s.completion for s in share.policy_samples]  # [b * k], the order of logp
        stale = torch.tensor([c.weights_version != policy_version for c in samples], device=device)
        sampler = torch.tensor([c.sum_logprob for c in samples], dtype=torch.float64, device=device)
        step = PolicyGradientStep(self, scored, rewards, target.view(len(share.target), -1), stale, sampler)
        if scored.logp_prepass is None:
            return step
        logp = scored.logp_prepass.detach().requires_grad_()
        logp_best = torch.zeros(len(share.policy), dtype=logp.dtype, device=device) if self.best_target else None
        leaves = (logp,) if logp_best is None else (logp, logp_best.requires_grad_())
        coefficients = torch.autograd.grad(step.evaluate(logp, logp_best)[0], leaves)  # d loss / d log pi per sequence
        return dataclasses.replace(step, coefficients=coefficients)


@dataclass(frozen=True)
class PolicyGradientStep:
    objective: PolicyGradient
    scored: Scored
    r_policy: torch.Tensor  # [b, k]
    r_target: torch.Tensor  # [b, N]
    stale: torch.Tensor  # [b * k] drawn by an older policy (pipelined mode)
    sampler: torch.Tensor  # [b * k] the sampler's log pi(y), float64
    coefficients: tuple[torch.Tensor, ...] = ()  # from the pre-pass; empty: one micro-batch back-propagates the loss

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
        s, b, reduce = step.scored, self.bond, rendezvous.all_reduce_sum
        r, r_target = step.r_policy[:, 0], step.r_target
        return jbond_loss(logp, s.logp_anchor, logp_best, r, r_target, b.beta, b.gamma, reduce, w_policy, s.w_target)


class Bond(PolicyGradient):
    def loss(self, step, logp, logp_best, w_policy):
        s, b, reduce = step.scored, self.bond, rendezvous.all_reduce_sum
        # Best-of-n of the anchor (iterated BOND) or of the frozen reference
        logp_target, r = s.logp_anchor if b.iterated else s.logp_ref, step.r_policy[:, 0]
        return bond_jeffreys_loss(
            logp, logp_target, logp_best, r, step.r_target, b.n, b.beta, reduce, w_policy, s.w_target
        )


class Rloo(PolicyGradient):
    best_target = False

    def loss(self, step, logp, logp_best, w_policy):
        k = self.bond.rloo_k
        logp_ref = step.scored.logp_ref.view(-1, k)
        return rloo_kl_loss(logp.view(-1, k), logp_ref, step.r_policy, self.bond.beta_rl, w_policy.view(-1, k))


class Sft:
    """ReST's Improve phase: loss = -mean over the batch of log pi(y), a sum over sequences divided by the global
    count, so each micro-batch back-propagates its own part and the ranks' averaged gradients are the loss's."""

    prepass = best_target = False

    def start(self, scored: Scored, policy_version: int) -> DistillStep:
        return DistillStep(self, 1.0 / scored.share.size)

    def part(self, logits: torch.Tensor, pack: Packed, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the micro-batch's loss sum, its detached log pi(y))"""
        logp = sequence_logprobs(logits, pack.targets[:, keep], pack.target_mask[:, keep])
        return -logp.sum(), logp.detach()

    def terms(self, loss: float) -> LossTerms:
        return LossTerms(loss, loss, 0.0, 0.0, 0.0)  # all of it the forward-KL (SFT) half


class Gkd(Sft):
    """The mean over the policy samples' completion tokens of JSD(gkd_beta) between the frozen teacher and pi: a
    sum over tokens divided by the global token count."""

    def __init__(self, teacher: Teacher, beta: float, world_size: int) -> None:
        self.teacher, self.beta, self.world_size = teacher, beta, world_size

    def start(self, scored: Scored, policy_version: int) -> DistillStep:
        # the token mean over the global batch: every rank needs the global token count
        tokens = sum(p.completion_tokens for p in scored.packs)
        total = torch.tensor([float(tokens)], dtype=torch.float64, device=scored.logp_ref.device)
        return DistillStep(self, self.world_size / max(rendezvous.all_reduce_sum(total).item(), 1.0))

    def part(self, logits: torch.Tensor, pack: Packed, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets, mask = pack.targets[:, keep], pack.target_mask[:, keep]
        part = masked_jsd_sum(logits, self.teacher.logits(pack, keep), mask, self.beta)
        return part, sequence_logprobs(logits.detach(), targets, mask)

    def terms(self, loss: float) -> LossTerms:
        return LossTerms(loss, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class DistillStep:
    objective: Sft
    scale: float  # 1 / the global count the sum is divided by, times the ranks the gradient is averaged over

    def part(self, i: int, pack: Packed, keep: torch.Tensor, logits: torch.Tensor) -> Part:
        part, logp = self.objective.part(logits, pack, keep)
        if not part.requires_grad:  # no completion token in this micro-batch: a zero that still back-propagates
            part = logits.sum() * 0.0  # (every rank's backward is a collective under ZeRO)
        return Part(part * self.scale, part.item() * self.scale, logp, None)

    def finish(self, parts: list[Part]) -> Outcome:
        return Outcome(self.objective.terms(sum(p.loss for p in parts)), torch.cat([p.logp for p in parts]), None)


def objective_for(bond: BondConfig, teacher: Teacher | None, world_size: int) -> PolicyGradient | Sft:
    """The objective of the config's algorithm (gkd's needs the teacher)."""
    if bond.algorithm is Algorithm.GKD:
        return Gkd(teacher, bond.gkd_beta, world_size)
    if bond.algorithm is Algorithm.REST:
        return Sft()
    return {Algorithm.JBOND: JBond, Algorithm.BOND: Bond, Algorithm.REINFORCE: Rloo}[bond.algorithm](bond)


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
