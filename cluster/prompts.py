"""Prompt sources (JSONL, Parquet, a Hugging Face dataset) and the checkpointed cursor that walks them.

The data contract: the prompt column (`field`) of a row holds either a string or a list of chat messages
{"role": ..., "content": ...}; every other column of the row (e.g. ground_truth) travels with the prompt as
`extras` to the reward (bond.records.Prompt). Bad rows (missing field, wrong type, empty, a malformed
message, longer than max_prompt_length tokens) are skipped and counted by reason, never silently dropped;
a source with no usable prompt is an error.
"""

from __future__ import annotations

import enum
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bond.config import ConfigError, check_types, require
from bond.records import ChatMessage, Prompt


class PromptFormat(enum.StrEnum):
    JSONL = "jsonl"  # one JSON object per line
    PARQUET = "parquet"
    HF = "hf"  # datasets.load_dataset(path, split=split) - a hub name, or a local dataset directory


@dataclass(frozen=True)
class PromptSource:
    """Where the prompts come from."""

    path: str = "configs/review_prompts.jsonl"
    """File path (jsonl/parquet) or dataset name/directory (hf)."""
    format: PromptFormat = PromptFormat.JSONL
    field: str = "prompt"
    """Column / JSON key holding the prompt: a string, or a list of {"role", "content"} chat messages."""
    split: str = "train"
    """Dataset split (hf only)."""
    shuffle: bool = True
    """Reshuffle the prompts every epoch (deterministically from `seed`)."""
    seed: int = 0
    string_as_user_message: bool = False
    """Send a plain-string prompt to the policy as one user message (so an instruct model's chat template
    applies) instead of as written; for string datasets used with chat models."""
    extra_columns: tuple[str, ...] | None = None
    """The row's other columns to carry with each prompt as extras (for function rewards). Unset: all of them;
    a list: only those (a row without one is skipped and counted); [] for none (large datasets: every extra
    travels with each sample to the actors and the reward service)."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens, as the policy reads it (chat template applied); longer rows are skipped and
    counted. Unset: no limit here (a prompt that fills the engine's context still fails loudly)."""

    def __post_init__(self) -> None:
        check_types(self)
        require(bool(self.path), "path", "is empty")
        require(bool(self.field), "field", "is empty")
        require(self.max_prompt_length is None or (isinstance(self.max_prompt_length, int)
                                                   and not isinstance(self.max_prompt_length, bool)
                                                   and self.max_prompt_length >= 1), "max_prompt_length",
                f"must be unset or an integer >= 1, got {self.max_prompt_length!r}")
        require(self.extra_columns is None or (isinstance(self.extra_columns, tuple) and all(
            isinstance(c, str) and c and c != self.field for c in self.extra_columns)), "extra_columns",
                f"must be unset or a list of column names other than field {self.field!r}, got {self.extra_columns!r}")


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[Prompt, ...]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows skipped


def _rows(source: PromptSource) -> list[object]:
    if source.format is PromptFormat.JSONL:
        path = Path(source.path)
        if not path.is_file():
            raise FileNotFoundError(f"prompts.path: no such file {path}")
        rows = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"prompts.path: {path}:{lineno} is not valid JSON ({e.msg})") from None
        return rows
    if source.format is PromptFormat.PARQUET:
        import pyarrow.parquet as pq

        table = pq.read_table(source.path)
        if source.field not in table.column_names:
            raise ValueError(f"prompts.field: {source.path} has no column {source.field!r} "
                             f"(columns: {table.column_names})")
        return table.to_pylist()
    try:
        import datasets
    except ImportError:
        raise RuntimeError("prompts.format=hf needs the `datasets` package: pip install datasets") from None
    path = Path(source.path)
    if path.is_dir() and (path / "dataset_info.json").exists():
        data = datasets.load_from_disk(str(path))
        data = data[source.split] if isinstance(data, datasets.DatasetDict) else data
    else:
        data = datasets.load_dataset(source.path, split=source.split)
    if source.field not in data.column_names:
        raise ValueError(f"prompts.field: dataset {source.path} has no column {source.field!r} "
                         f"(columns: {data.column_names})")
    return list(data)


def load_prompts(source: PromptSource) -> PromptSet:
    prompts, skipped = [], Counter()
    for row in _rows(source):
        value = row.get(source.field) if isinstance(row, dict) else None
        if value is None:
            skipped[f"missing field {source.field!r}"] += 1
            continue
        if source.extra_columns is None:
            extras = {k: v for k, v in row.items() if k != source.field}
        else:
            missing = [c for c in source.extra_columns if c not in row]
            if missing:
                skipped[f"missing extra column {missing[0]!r}"] += 1
                continue
            extras = {c: row[c] for c in source.extra_columns}
        try:
            prompt = Prompt.parse(value.strip() if isinstance(value, str) else value, extras=extras)
        except ValueError as reason:
            skipped[str(reason)] += 1
            continue
        if source.string_as_user_message and not prompt.is_chat:
            prompt = Prompt(messages=(ChatMessage("user", prompt.text),), extras=prompt.extras)
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"prompts: no usable prompt in {source.path} (skipped: {dict(skipped) or 'none'})")
    return PromptSet(prompts=tuple(prompts), skipped=dict(skipped))


def fit_to_policy(prompt_set: PromptSet, tokenizer, max_prompt_length: int | None) -> PromptSet:
    """Render every prompt with the policy tokenizer (as the actors will) and skip, counted, those longer than
    max_prompt_length tokens. Chat prompts with a tokenizer that has no chat template are a config error."""
    from actors.prompt_rendering import render

    kept, skipped = [], Counter(prompt_set.skipped)
    for prompt in prompt_set.prompts:
        try:
            length = len(render(tokenizer, prompt).token_ids)
        except ValueError as e:
            raise ConfigError(f"models.policy: {e}") from None
        if max_prompt_length is not None and length > max_prompt_length:
            skipped[f"longer than prompts.max_prompt_length={max_prompt_length} tokens"] += 1
        else:
            kept.append(prompt)
    if not kept:
        raise ValueError(f"prompts: no usable prompt (skipped: {dict(skipped)})")
    return PromptSet(prompts=tuple(kept), skipped=dict(skipped))


def needs_policy_tokenizer(source: PromptSource, prompt_set: PromptSet) -> bool:
    """Rendering in the driver costs a tokenizer load: only for a length limit or chat prompts (template check)."""
    return source.max_prompt_length is not None or any(p.is_chat for p in prompt_set.prompts)


@dataclass(frozen=True)
class PromptCursor:
    """Position in the (per-epoch shuffled) prompt stream; saved in checkpoints so a resume continues exactly."""

    epoch: int = 0
    index: int = 0


def take(prompts: tuple[Prompt, ...], cursor: PromptCursor, count: int, seed: int, shuffle: bool,
         ) -> tuple[list[tuple[int, Prompt]], PromptCursor]:
    """The next `count` (dataset index, prompt) pairs and the advanced cursor. Epochs wrap around."""
    out, epoch, index = [], cursor.epoch, cursor.index
    while len(out) < count:
        order = list(range(len(prompts)))
        if shuffle:
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
        while index < len(order) and len(out) < count:
            out.append((order[index], prompts[order[index]]))
            index += 1
        if index == len(order):
            epoch, index = epoch + 1, 0
    return out, PromptCursor(epoch, index)
