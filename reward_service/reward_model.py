"""The RewardModel role: score (prompt, completion) pairs with one finite float each.

The three kinds (learned.py, entailment.py, function.py) implement it in-process and know nothing of
Ray; serve_app.py serves any of them. `model_id` is the provenance every ScoredCompletion carries.

A prompt is a plain string or a bond.records.Prompt (text or chat messages, plus the data row's extras):
each kind builds its model's input from it with the model's own tokenizer (learned.py), takes its plain
text (entailment.py), or hands the extras to the function (function.py).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from bond.records import Prompt
from reward_service.errors import BadRequestError, NonFiniteRewardError, RewardModelError

PromptLike = str | Prompt


@runtime_checkable
class RewardModel(Protocol):
    """r(x, y) for a batch: one float per (prompt, completion) pair, in order."""

    model_id: str
    """Which reward model this is, weights included: two different checkpoints get different ids."""

    def score(self, prompts: Sequence[PromptLike], completions: Sequence[str]) -> list[float]:
        """Rewards for pairs (prompts[i], completions[i]); raises NonFiniteRewardError rather than return NaN/inf."""
        ...


def check_pairs(prompts: Sequence[PromptLike], completions: Sequence[str]) -> None:
    """The argument contract shared by every kind: equally long sequences of prompts (strings or Prompt
    records) and completion strings."""
    if isinstance(prompts, str) or isinstance(completions, str):
        raise BadRequestError("prompts and completions must be lists of strings, not a single string", "wrong_type")
    if len(prompts) != len(completions):
        raise BadRequestError(f"{len(prompts)} prompts but {len(completions)} completions", "length_mismatch")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, PromptLike):
            raise BadRequestError(
                f"prompts[{i}] must be a string or a Prompt, got {type(prompt).__name__}", "wrong_type"
            )
        _check_unicode("prompts", i, plain_text(prompt))
    for i, text in enumerate(completions):
        if not isinstance(text, str):
            raise BadRequestError(f"completions[{i}] must be a string, got {type(text).__name__}", "wrong_type")
        _check_unicode("completions", i, text)


def _check_unicode(name: str, i: int, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate ("\\ud800" in JSON): no tokenizer can take it
        raise BadRequestError(f"{name}[{i}] is not valid Unicode ({e.reason} at {e.start})", "bad_unicode") from None


def plain_text(prompt: PromptLike) -> str:
    """The prompt without any template (a chat's contents one per line): what untemplated models read."""
    return prompt if isinstance(prompt, str) else prompt.plain_text


def extras(prompt: PromptLike) -> dict[str, object]:
    """The data row's other columns (none for a bare string)."""
    return {} if isinstance(prompt, str) else dict(prompt.extras)


def chat(prompt: PromptLike, completion: str) -> list[dict[str, str]]:
    """The conversation a templated reward model reads: the prompt's messages (a plain prompt as one user
    message), then the completion as the assistant's reply."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt.as_dicts()
    return messages + [{"role": "assistant", "content": completion}]


def checked_rewards(values: Sequence[object], expected: int, model_id: str) -> list[float]:
    """`values` as plain floats, after checking there is one finite number per sample.

    Raises RewardModelError (wrong count or type) or NonFiniteRewardError naming the model and the
    first bad sample, so a NaN is caught where it is made instead of inside the learner's loss.
    """
    if len(values) != expected:
        raise RewardModelError(f"reward model {model_id!r} returned {len(values)} rewards for {expected} samples")
    rewards = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars included
            raise RewardModelError(
                f"reward model {model_id!r} returned {type(value).__name__} {value!r} for sample {i}, not a number"
            )
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteRewardError(
                f"reward model {model_id!r} returned a non-finite reward {value!r} for sample {i}"
            )
        rewards.append(value)
    return rewards
