"""ScoreRequest: a validated scoring request, from Python arguments or from an HTTP JSON body.

Over HTTP a prompt is a string, or an object {"messages": [{"role", "content"}, ...] | "text": str,
"extras": {column: value}} (the data contract of bond.records.Prompt).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from bond.records import Prompt
from reward_service.errors import BadRequestError
from reward_service.reward_model import PromptLike, check_pairs


@dataclass(frozen=True)
class ScoreRequest:
    prompts: tuple[PromptLike, ...]  # [N] strings or Prompt records
    completions: tuple[str, ...]  # [N] completions[i] answers prompts[i]

    def __post_init__(self) -> None:
        check_pairs(self.prompts, self.completions)

    @property
    def size(self) -> int:
        return len(self.prompts)

    @classmethod
    def of(cls, prompts: Sequence[PromptLike], completions: Sequence[str]) -> ScoreRequest:
        """From the Python handle API's arguments (sequences of prompts and of completion strings)."""
        for name, value in (("prompts", prompts), ("completions", completions)):
            if isinstance(value, str | bytes) or not isinstance(value, Sequence):
                raise BadRequestError(f"{name} must be a list of strings, got {type(value).__name__}", "wrong_type")
        return cls(tuple(prompts), tuple(completions))

    @classmethod
    def from_json(cls, body: bytes) -> ScoreRequest:
        """From an HTTP body {"prompts": [str, ...], "completions": [str, ...]}."""
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequestError(f"the body is not valid JSON: {exc}", "bad_json") from None
        if not isinstance(data, dict):
            raise BadRequestError(
                f"expected a JSON object with prompts and completions, got {type(data).__name__}", "wrong_type"
            )
        missing = [k for k in ("prompts", "completions") if k not in data]
        if missing:
            raise BadRequestError(
                f'missing field(s) {missing}; expected {{"prompts": [str, ...], "completions": [str, ...]}}',
                "missing_field",
            )
        for name in ("prompts", "completions"):
            if not isinstance(data[name], list):
                raise BadRequestError(
                    f"{name} must be a JSON list of strings, got {type(data[name]).__name__}", "wrong_type"
                )
        return cls(tuple(_json_prompt(p, i) for i, p in enumerate(data["prompts"])), tuple(data["completions"]))


def _json_prompt(value: object, index: int) -> object:
    """A JSON prompt: a string as is, an object as a Prompt record; anything else is left for check_pairs."""
    if not isinstance(value, dict):
        return value
    unknown = sorted(set(value) - {"messages", "text", "extras"})
    extras = value.get("extras", {})
    if unknown or not isinstance(extras, dict) or ("messages" in value) == ("text" in value):
        raise BadRequestError(
            f"prompts[{index}]: expected a string or an object with exactly one of "
            f'"messages"/"text" and optional "extras" (an object), got keys {sorted(value)}',
            "wrong_type",
        )
    try:
        return Prompt.parse(value.get("messages", value.get("text")), extras)
    except ValueError as e:
        raise BadRequestError(f"prompts[{index}]: {e}", "wrong_type") from None
