"""A Python function of (prompt, completion) as a RewardModel, for verifiable tasks.

Named by an import path "package.module:function" (not a callable object) so that the same spec can
be written in a config file and re-imported inside a Serve replica in another process.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Sequence

from reward_service.errors import RewardModelError
from reward_service.reward_model import check_pairs, checked_rewards


def load_function(import_path: str):
    """The callable named by "package.module:function" (dots after the colon reach into attributes)."""
    module_name, sep, attr_path = import_path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"function reward {import_path!r}: expected 'package.module:function'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"function reward {import_path!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"function reward {import_path!r}: {obj.__name__!r} has no attribute {part!r}")
        obj = getattr(obj, part)
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


class FunctionReward:
    """r(x, y) = fn(prompt, completion) for an importable fn returning a number."""

    def __init__(self, import_path: str) -> None:
        self.fn = load_function(import_path)
        self.model_id = f"function:{import_path}@{_source_hash(self.fn)}"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        check_pairs(prompts, completions)
        values = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            try:
                values.append(self.fn(prompt, completion))
            except Exception as exc:
                raise RewardModelError(f"reward model {self.model_id!r} raised on sample {i}: "
                                       f"{type(exc).__name__}: {exc}") from exc
        return checked_rewards(values, len(values), self.model_id)

    def __repr__(self) -> str:
        return f"FunctionReward({self.model_id!r})"
