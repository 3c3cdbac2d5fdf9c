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
class ChatMessage:
    """One turn of a chat prompt, as a chat template reads it."""

    role: str  # "system" | "user" | "assistant" (whatever roles the model's chat template knows)
    content: str


@dataclass(frozen=True)
class Prompt:
    """One prompt row: plain text or a list of chat messages, plus the row's other columns.

    Exactly one of `text` / `messages` is given. A plain text is sent to the policy as written (it may
    already be templated); messages go through the policy tokenizer's chat template with the generation
    prompt. `extras` are the dataset's other columns (e.g. ground_truth), handed to function rewards.
    """

    text: str = ""
    messages: tuple[ChatMessage, ...] = ()
    extras: Mapping[str, object] = field(default_factory=dict, hash=False)  # column name -> JSON-like value

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not isinstance(self.messages, tuple):
            raise ValueError(
                f"Prompt: text must be a str and messages a tuple, got {type(self.text).__name__} "
                f"and {type(self.messages).__name__}"
            )
        if bool(self.text.strip()) == bool(self.messages):
            raise ValueError("Prompt: give exactly one of a non-empty text or a non-empty message list")
        for i, m in enumerate(self.messages):
            if not (isinstance(m, ChatMessage) and isinstance(m.role, str) and m.role and isinstance(m.content, str)):
                raise ValueError(f"Prompt: message {i} must be a ChatMessage with a role and a string content")
        object.__setattr__(self, "extras", dict(self.extras))  # a private copy: the record stays as built

    @classmethod
    def parse(cls, value: object, extras: Mapping[str, object] | None = None) -> Prompt:
        """A prompt from a data row's value: a string, or a list of {"role": ..., "content": ...} mappings.
        Raises ValueError with a short reason (used as the skip reason of a bad row)."""
        extras = dict(extras or {})
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("empty")
            return cls(text=value, extras=extras)
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("empty message list")
            messages = []
            for m in value:
                if not (
                    isinstance(m, Mapping)
                    and isinstance(m.get("role"), str)
                    and m["role"]
                    and isinstance(m.get("content"), str)
                ):
                    raise ValueError("message without a string role and content")
                messages.append(ChatMessage(role=m["role"], content=m["content"]))
            if not any(m.content.strip() for m in messages):
                raise ValueError("empty")
            return cls(messages=tuple(messages), extras=extras)
        raise ValueError(f"not a string or a message list ({type(value).__name__})")

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)

    @property
    def plain_text(self) -> str:
        """The prompt without any template: the text, or the messages' contents one per line. What a reader
        sees, and what a reward model or function without a chat template reads as the prompt."""
        return self.text or "\n".join(m.content for m in self.messages)

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages as a chat template takes them; a plain text becomes one user message."""
        if not self.messages:
            return [{"role": "user", "content": self.text}]
        return [{"role": m.role, "content": m.content} for m in self.messages]


@dataclass(frozen=True)
class Completion:
    """One sampled completion y for one prompt x."""

    prompt_id: int  # index of the prompt in the step's prompt list (or the dataset)
    prompt: str  # the prompt text exactly as rendered for the engine (chat template applied)
    prompt_token_ids: tuple[int, ...]  # [P] what the engine read: BOS (if any) once, template included
    token_ids: tuple[int, ...]  # [T] sampled tokens, EOS included when generated
    text: str  # detokenised completion
    logprobs: tuple[float, ...]  # [T] log pi_sampler(y_t | x, y_<t), nats, of the sampled tokens
    role: Role
    weights_version: int  # version of the weights the sampler held when it produced this sample
    finish_reason: str = "length"  # "stop" (EOS or stop string) or "length" (max_new_tokens)
    source: Prompt | None = None  # the prompt row answered (messages, extras): what the reward service reads

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"Completion: token_ids has {len(self.token_ids)} tokens but logprobs has {len(self.logprobs)}"
            )

    @property
    def prompt_text(self) -> str:
        """The prompt as a reader should see it: the row's plain text (no chat template), else the rendering."""
        return self.source.plain_text if self.source is not None else self.prompt

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
    """What the learner consumes for one step: B prompts, k policy samples and N target samples each.

    The target is the model whose Best-of-n the loss distils: pi_anchor (J-BOND, iterated BOND) or pi_ref
    (BOND); REINFORCE, rest and gkd have none (N = 0). bond.sampling_plan gives k, N and the target's role per
    algorithm. A rest SFT batch is B Grow samples, each its own group of k = 1 (two may share a prompt).
    """

    policy: tuple[tuple[ScoredCompletion, ...], ...]  # [B][k] y ~ pi (k = 1; REINFORCE: rloo_k)
    target: tuple[tuple[ScoredCompletion, ...], ...]  # [B][N] y' ~ the target (N = 2 for J-BOND, 0 without one)

    def __post_init__(self) -> None:
        if len(self.policy) != len(self.target):
            raise ValueError(f"Batch: {len(self.policy)} policy groups but {len(self.target)} target groups")
        if not self.policy:
            raise ValueError("Batch: empty")
        for name, groups in (("policy", self.policy), ("target", self.target)):
            sizes = {len(group) for group in groups}
            if len(sizes) != 1 or (name == "policy" and 0 in sizes):
                raise ValueError(
                    f"Batch: every prompt needs the same {'nonzero ' * (name == 'policy')}number "
                    f"of {name} samples, got {sorted(sizes)}"
                )
        target_roles = {t.completion.role for group in self.target for t in group}
        if Role.POLICY in target_roles or len(target_roles) > 1:
            raise ValueError(
                f"Batch: target samples must all come from one non-policy role, got "
                f"{sorted(r.value for r in target_roles)}"
            )
        for i, (ys, group) in enumerate(zip(self.policy, self.target, strict=True)):
            prompt_id = ys[0].completion.prompt_id
            for y in ys:
                if y.completion.role is not Role.POLICY:
                    raise ValueError(f"Batch: policy[{i}] has a sample of role {y.completion.role}")
            for s in (*ys, *group):
                if s.completion.prompt_id != prompt_id:
                    raise ValueError(
                        f"Batch: prompt {i} mixes samples of prompt ids {prompt_id} and {s.completion.prompt_id}"
                    )

    @property
    def size(self) -> int:
        return len(self.policy)

    @property
    def target_role(self) -> Role | None:
        return self.target[0][0].completion.role if self.target[0] else None

    @property
    def policy_samples(self) -> list[ScoredCompletion]:
        """[B * k] every policy sample, a prompt's k consecutive."""
        return [s for group in self.policy for s in group]

    @property
    def target_samples(self) -> list[ScoredCompletion]:
        """[B * N] every target sample, a prompt's N consecutive."""
        return [s for group in self.target for s in group]

    def slice(self, start: int, stop: int) -> Batch:
        """Prompts [start, stop): a data-parallel rank's or a micro-batch's share."""
        return Batch(policy=self.policy[start:stop], target=self.target[start:stop])


@dataclass(frozen=True)
class StepStats:
    """What one learner step reports (all per-sequence quantities are means over the batch, in nats)."""

    step: int  # optimizer steps taken so far, this one included
    loss: float  # (1 - beta) * loss_fw + beta * loss_bw + gamma * loss_reg (REINFORCE: loss_bw; gkd: the JSD)
    loss_fw: float  # -log pi(y'_best), forward-KL (SFT) half (0 for REINFORCE and gkd; rest: its SFT loss)
    loss_bw: float  # policy-gradient surrogate of the backward-KL half
    loss_reg: float  # score-function surrogate of KL(pi || pi_anchor)
    reward_policy: float  # mean r(x, y) of the policy samples
    reward_anchor: float  # mean r(x, y') of the target samples (anchor; reference for BOND); nan without any
    kl_ref: float  # mean of log pi(y) - log pi_ref(y) on policy samples
    kl_anchor: float  # mean of log pi(y) - log pi_anchor(y) on policy samples
    frac_penalised: float  # fraction of policy samples with r_J = -log 16
    grad_norm: float  # global L2 norm of the gradient before clipping
    lr: float
    policy_version: int  # weights version after this step
    anchor_version: int
    sample_policy_version: float  # mean weights_version of the policy samples used
    sample_anchor_version: float  # mean weights_version of the anchor samples used (nan if none were drawn)
    tokens: int  # completion tokens the learner processed this step
    seconds: float  # wall-clock time of the step
    importance_weight_policy: float = 1.0  # mean truncated pi_now/pi_sampler of the policy samples (1: all fresh)
    importance_weight_anchor: float = 1.0  # mean truncated weight of the anchor pairs (bond.off_policy)


@dataclass(frozen=True)
class WeightUpdate:
    """A versioned push of (part of) one role's weights, in Hugging Face parameter names.

    A full update carries every parameter; a bucketed update sends a model in several updates that
    share a version, numbered from `bucket=0`, the last one with `last_bucket=True` (only then does the
    version take effect). The numbers let a receiver refuse a push with a bucket missing.
    """

    role: Role
    version: int
    tensors: Mapping[str, torch.Tensor] = field(repr=False)  # name -> tensor, HF checkpoint names
    last_bucket: bool = True
    bucket: int = 0  # this bucket's place in its push

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())
