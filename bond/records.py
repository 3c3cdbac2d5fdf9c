"""Typed, frozen records passed between the actors, the reward service and the learner.

Every record carries its provenance: which weights made a sample (role, weights_version) and
which reward model scored it (reward_model_id). Shapes and units are given in the comments.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


class Role(enum.StrEnum):
    """Which weights a sample or a weight push belongs to (one word, one meaning)."""

    POLICY = "policy"  # pi, the model being trained
    ANCHOR = "anchor"  # pi_anchor, the EMA of the policy
    REFERENCE = "reference"  # pi_ref, the frozen starting model


@dataclass(frozen=True)
class Completion:
    """One sampled completion y for one prompt x."""

    prompt_id: int  # index of the prompt in the step's prompt list (or the dataset)
    prompt: str
    prompt_token_ids: tuple[int, ...]  # [P]
    token_ids: tuple[int, ...]  # [T] sampled tokens, EOS included when generated
    text: str  # detokenised completion
    logprobs: tuple[float, ...]  # [T] log pi_sampler(y_t | x, y_<t), nats, of the sampled tokens
    role: Role
    weights_version: int  # version of the weights the sampler held when it produced this sample
    finish_reason: str = "length"  # "stop" (EOS or stop string) or "length" (max_new_tokens)

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"Completion: token_ids has {len(self.token_ids)} tokens but logprobs has {len(self.logprobs)}"
            )

    @property
    def sum_logprob(self) -> float:
        """log pi_sampler(y | x): the sum of the per-token log-probabilities (nats)."""
        return math.fsum(self.logprobs)


@dataclass(frozen=True)
class ScoredCompletion:
    """A completion with its scalar reward r(x, y) and the reward model that gave it."""

    completion: Completion
    reward: float
    reward_model_id: str

    def __post_init__(self) -> None:
        if not math.isfinite(self.reward):
            raise ValueError(
                f"ScoredCompletion: reward {self.reward!r} from {self.reward_model_id!r} is not finite "
                f"(prompt_id={self.completion.prompt_id})"
            )


@dataclass(frozen=True)
class Batch:
    """What the learner consumes for one J-BOND step: B prompts, one policy sample and N anchor samples each."""

    policy: tuple[ScoredCompletion, ...]  # [B] y ~ pi
    anchor: tuple[tuple[ScoredCompletion, ...], ...]  # [B][N] y' ~ pi_anchor (N = 2 for J-BOND)

    def __post_init__(self) -> None:
        if len(self.policy) != len(self.anchor):
            raise ValueError(f"Batch: {len(self.policy)} policy samples but {len(self.anchor)} anchor groups")
        if not self.policy:
            raise ValueError("Batch: empty")
        sizes = {len(group) for group in self.anchor}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"Batch: every prompt needs the same nonzero number of anchor samples, got {sizes}")
        for i, (y, group) in enumerate(zip(self.policy, self.anchor, strict=True)):
            if y.completion.role is not Role.POLICY:
                raise ValueError(f"Batch: policy[{i}] has role {y.completion.role}")
            for a in group:
                if a.completion.role is not Role.ANCHOR:
                    raise ValueError(f"Batch: anchor[{i}] has a sample of role {a.completion.role}")
                if a.completion.prompt_id != y.completion.prompt_id:
                    raise ValueError(f"Batch: anchor[{i}] is for prompt {a.completion.prompt_id}, "
                                     f"policy[{i}] for prompt {y.completion.prompt_id}")

    @property
    def size(self) -> int:
        return len(self.policy)

    def slice(self, start: int, stop: int) -> Batch:
        """Prompts [start, stop): a data-parallel rank's or a micro-batch's share."""
        return Batch(policy=self.policy[start:stop], anchor=self.anchor[start:stop])


@dataclass(frozen=True)
class StepStats:
    """What one learner step reports (all per-sequence quantities are means over the batch, in nats)."""

    step: int  # optimizer steps taken so far, this one included
    loss: float  # (1 - beta) * loss_fw + beta * loss_bw + gamma * loss_reg
    loss_fw: float  # -log pi(y'_best), forward-KL (SFT) half
    loss_bw: float  # policy-gradient surrogate of the backward-KL half
    loss_reg: float  # score-function surrogate of KL(pi || pi_anchor)
    reward_policy: float  # mean r(x, y) of the policy samples
    reward_anchor: float  # mean r(x, y') of the anchor samples
    kl_ref: float  # mean of log pi(y) - log pi_ref(y) on policy samples
    kl_anchor: float  # mean of log pi(y) - log pi_anchor(y) on policy samples
    frac_penalised: float  # fraction of policy samples with r_J = -log 16
    grad_norm: float  # global L2 norm of the gradient before clipping
    lr: float
    policy_version: int  # weights version after this step
    anchor_version: int
    sample_policy_version: float  # mean weights_version of the policy samples used
    sample_anchor_version: float  # mean weights_version of the anchor samples used
    tokens: int  # completion tokens the learner processed this step
    seconds: float  # wall-clock time of the step


@dataclass(frozen=True)
class WeightUpdate:
    """A versioned push of (part of) one role's weights, in Hugging Face parameter names.

    A full update carries every parameter; a bucketed update sends a model in several updates that
    share a version, the last one with `last_bucket=True` (only then does the version take effect).
    """

    role: Role
    version: int
    tensors: Mapping[str, torch.Tensor] = field(repr=False)  # name -> tensor, HF checkpoint names
    last_bucket: bool = True

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())
