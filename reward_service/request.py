"""ScoreRequest: a validated scoring request, from Python arguments or from an HTTP JSON body."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from reward_service.errors import BadRequestError
from reward_service.reward_model import check_pairs


@dataclass(frozen=True)
class ScoreRequest:
    prompts: tuple[str, ...]  # [N]
    completions: tuple[str, ...]  # [N] completions[i] answers prompts[i]

    def __post_init__(self) -> None:
        check_pairs(self.prompts, self.completions)

    @property
    def size(self) -> int:
        return len(self.prompts)

    @classmethod
    def of(cls, prompts: Sequence[str], completions: Sequence[str]) -> ScoreRequest:
        """From the Python handle API's arguments (any sequences of strings)."""
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
            raise BadRequestError(f"expected a JSON object with prompts and completions, got {type(data).__name__}",
                                  "wrong_type")
        missing = [k for k in ("prompts", "completions") if k not in data]
        if missing:
            raise BadRequestError(f"missing field(s) {missing}; expected "
                                  '{"prompts": [str, ...], "completions": [str, ...]}', "missing_field")
        for name in ("prompts", "completions"):
            if not isinstance(data[name], list):
                raise BadRequestError(f"{name} must be a JSON list of strings, got {type(data[name]).__name__}",
                                      "wrong_type")
        return cls(tuple(data["prompts"]), tuple(data["completions"]))
