"""ScoreRequest: a validated scoring request, from Python arguments or from an HTTP JSON body.

Over HTTP the body is a ScoreBody (a pydantic model, also the API's OpenAPI schema): a prompt is a string,
or an object {"messages": [{"role", "content"}, ...] | "text": str, "extras": {column: value}} (the data
contract of bond.records.Prompt).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Discriminator, JsonValue, Tag, ValidationError, model_validator

from bond.records import Prompt
from reward_service.errors import BadRequestError
from reward_service.reward_model import PromptLike, check_pairs


class ChatMessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str


class PromptBody(BaseModel):
    """A prompt as an object: exactly one of `messages` / `text`, and the data row's other columns."""

    model_config = ConfigDict(extra="forbid")
    messages: list[ChatMessageBody] | None = None
    text: str | None = None
    extras: dict[str, JsonValue] = {}

    @model_validator(mode="after")
    def _one_form(self) -> PromptBody:
        if (self.messages is None) == (self.text is None):
            raise ValueError('give exactly one of "messages" and "text"')
        self.record()  # Prompt's own checks (no empty text, roles and contents), reported as this field's error
        return self

    def record(self) -> Prompt:
        value = self.text if self.messages is None else [m.model_dump() for m in self.messages]
        return Prompt.parse(value, self.extras)


def _prompt_form(value: object) -> str:
    return "text" if isinstance(value, str) else "object"


# Tagged, so a bad prompt gets the one error of the form it was meant as, not one per form.
PromptField = Annotated[Annotated[str, Tag("text")] | Annotated[PromptBody, Tag("object")], Discriminator(_prompt_form)]


class ScoreBody(BaseModel):
    """The HTTP request: completions[i] answers prompts[i] (equal lengths, checked by ScoreRequest)."""

    prompts: list[PromptField]
    completions: list[str]


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
        """From an HTTP body, a ScoreBody in JSON; every way it can be wrong is a BadRequestError."""
        try:
            # The standard parser, not pydantic's: it keeps a lone surrogate ("\ud800") for check_pairs to name.
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequestError(f"the body is not valid JSON: {exc}", "bad_json") from None
        except RecursionError:
            raise BadRequestError("the body is not valid JSON: it is nested too deeply", "bad_json") from None
        try:
            parsed = ScoreBody.model_validate(data)
        except ValidationError as exc:
            raise _bad_body(exc) from None
        prompts = (p if isinstance(p, str) else p.record() for p in parsed.prompts)
        return cls(tuple(prompts), tuple(parsed.completions))


_FIELDS = frozenset({"prompts", "completions", "messages", "text", "extras", "role", "content"})


def _bad_body(error: ValidationError) -> BadRequestError:
    """The first problems pydantic found, each named by where it is in the body (down to a prompt's extras)."""
    problems = error.errors(include_url=False)
    named = [
        f"{_where(p['loc'])}: " + (f"unknown field {p['loc'][-1]!r}" if p["type"] == "extra_forbidden" else p["msg"])
        for p in problems[:3]
    ]
    missing = any(p["type"] == "missing" and len(p["loc"]) == 1 for p in problems)
    expected = ' (expected {"prompts": [str | {"messages" | "text", "extras"}, ...], "completions": [str, ...]})'
    return BadRequestError("; ".join(named) + expected, "missing_field" if missing else "wrong_type")


def _where(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as the body's path, e.g. prompts[1].messages[0].role: pydantic's names for the
    forms of a union are left out, and so is anything inside extras (a caller's data, possibly very deep)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _FIELDS:
            path += f".{part}" if path else part
        if part == "extras":
            break
    return path or "body"
