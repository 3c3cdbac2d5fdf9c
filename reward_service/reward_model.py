"""The RewardModel role: score (prompt, completion) pairs with one finite float each.

The three kinds (learned.py, entailment.py, function.py) implement it in-process and know nothing of
Ray; serve_app.py serves any of them. `model_id` is the provenance every ScoredCompletion carries.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from reward_service.errors import BadRequestError, NonFiniteRewardError, RewardModelError


@runtime_checkable
class RewardModel(Protocol):
    """r(x, y) for a batch: one float per (prompt, completion) pair, in order."""

    model_id: str
    """Which reward model this is, weights included: two different checkpoints get different ids."""

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Rewards for pairs (prompts[i], completions[i]); raises NonFiniteRewardError rather than return NaN/inf."""
        ...


def check_pairs(prompts: Sequence[str], completions: Sequence[str]) -> None:
    """The argument contract shared by every kind: equally long sequences of strings."""
    if isinstance(prompts, str) or isinstance(completions, str):
        raise BadRequestError("prompts and completions must be lists of strings, not a single string", "wrong_type")
    if len(prompts) != len(completions):
        raise BadRequestError(f"{len(prompts)} prompts but {len(completions)} completions", "length_mismatch")
    for name, texts in (("prompts", prompts), ("completions", completions)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise BadRequestError(f"{name}[{i}] must be a string, got {type(text).__name__}", "wrong_type")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate ("\\ud800" in JSON): no tokenizer can take it
                raise BadRequestError(f"{name}[{i}] is not valid Unicode ({e.reason} at {e.start})",
                                      "bad_unicode") from None


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
                f"reward model {model_id!r} returned {type(value).__name__} {value!r} for sample {i}, not a number")
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteRewardError(f"reward model {model_id!r} returned a non-finite reward {value!r} "
                                       f"for sample {i}")
        rewards.append(value)
    return rewards
