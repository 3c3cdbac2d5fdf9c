"""A Python function of (prompt, completion[, dataset columns]) as a RewardModel, for verifiable tasks.

Named by an import path "package.module:function" (not a callable object) so that the same spec can
be written in a config file and re-imported inside a Serve replica in another process.

The contract: fn(prompt: str, completion: str, **columns) -> float. `prompt` is the prompt's plain text
(a chat prompt's message contents, one per line). The data row's other columns (Prompt.extras, e.g.
`ground_truth`) are passed as keyword arguments: those the function names as parameters, or all of them
if it takes **kwargs; columns it does not name are not passed. A parameter without a default that the
row does not have is an error naming it, never a silent default.
"""

from __future__ import annotations

import hashlib
import inspect
import pkgutil
from collections.abc import Sequence

from reward_service.errors import RewardModelError
from reward_service.reward_model import PromptLike, check_pairs, checked_rewards, extras, plain_text


def load_function(import_path: str):
    """The callable named by "package.module:function" (dots after the colon reach into attributes)."""
    module_name, sep, attr_path = import_path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"function reward {import_path!r}: expected 'package.module:function'")
    try:
        obj = pkgutil.resolve_name(import_path)
    except ImportError as exc:
        raise ValueError(f"function reward {import_path!r}: cannot import {module_name!r}: {exc}") from exc
    except (AttributeError, ValueError) as exc:  # "module 'm' has no attribute 'f'", or not an identifier
        raise ValueError(f"function reward {import_path!r}: {exc}") from exc
    if not callable(obj):
        raise ValueError(f"function reward {import_path!r}: {type(obj).__name__} is not callable")
    return obj


def _source_hash(fn) -> str:
    """A short hash of the function's source, so editing the function changes the model id."""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return "nosource"
    return hashlib.blake2b(source.encode(), digest_size=6).hexdigest()


class ColumnArguments:
    """Which data-row columns a function takes as keyword arguments, read from its signature once."""

    def __init__(self, fn) -> None:
        try:
            params = list(inspect.signature(fn).parameters.values())[2:]  # after (prompt, completion)
        except (TypeError, ValueError):  # a builtin without a signature takes no columns
            params = []
        self.takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        named = [
            p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        self.names = {p.name for p in named}
        self.required = {p.name for p in named if p.default is inspect.Parameter.empty}

    def __call__(self, columns: dict[str, object], index: int, model_id: str) -> dict[str, object]:
        missing = sorted(self.required - columns.keys())
        if missing:
            raise RewardModelError(
                f"reward model {model_id!r} needs column(s) {missing} for sample {index}; the "
                f"prompt row has {sorted(columns) or 'no other columns'}"
            )
        return dict(columns) if self.takes_all else {k: v for k, v in columns.items() if k in self.names}


class FunctionReward:
    """r(x, y) = fn(prompt, completion, **columns) for an importable fn returning a number."""

    def __init__(self, import_path: str) -> None:
        self.fn = load_function(import_path)
        self.model_id = f"function:{import_path}@{_source_hash(self.fn)}"
        self._columns = ColumnArguments(self.fn)

    def score(self, prompts: Sequence[PromptLike], completions: Sequence[str]) -> list[float]:
        check_pairs(prompts, completions)
        values = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            kwargs = self._columns(extras(prompt), i, self.model_id)
            try:
                values.append(self.fn(plain_text(prompt), completion, **kwargs))
            except Exception as exc:
                raise RewardModelError(
                    f"reward model {self.model_id!r} raised on sample {i}: {type(exc).__name__}: {exc}"
                ) from exc
        return checked_rewards(values, len(values), self.model_id)

    def __repr__(self) -> str:
        return f"FunctionReward({self.model_id!r})"
