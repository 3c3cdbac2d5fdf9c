"""Prompt sources (JSONL, Parquet, a Hugging Face dataset) and the checkpointed cursor that walks them.

The data contract: the prompt column (`field`) of a row holds either a string or a list of chat messages
{"role": ..., "content": ...}; every other column of the row (e.g. ground_truth) travels with the prompt as
`extras` to the reward (bond.records.Prompt). Bad rows (not UTF-8, invalid JSON, not an object, missing
field, wrong type, empty, a malformed message, a duplicate, no tokens or more than the policy allows) are skipped and
counted by reason, never silently dropped. A source that cannot be read at all, or has no usable prompt, is
a ConfigError naming the field.
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


@dataclass(frozen=True)
class _Unreadable:
    reason: str  # a JSONL line that could not be decoded


_NOT_UTF8, _BAD_JSON = _Unreadable("not UTF-8"), _Unreadable("invalid JSON")


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
    """How `path` is read."""
    field: str = "prompt"
    """Column / JSON key holding the prompt: a string, or a list of {"role", "content"} chat messages."""
    split: str = "train"
    """Dataset split (hf only)."""
    shuffle: bool = True
    """Reshuffle the prompts every epoch (deterministically from `seed`)."""
    seed: int = 0
    """Seed of the per-epoch shuffle."""
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
        require(
            self.max_prompt_length is None or self.max_prompt_length >= 1,
            "max_prompt_length",
            f"must be unset or an integer >= 1, got {self.max_prompt_length!r}",
        )
        require(
            self.extra_columns is None
            or (
                isinstance(self.extra_columns, tuple)
                and all(isinstance(c, str) and c and c != self.field for c in self.extra_columns)
            ),
            "extra_columns",
            f"must be unset or a list of column names other than field {self.field!r}, got {self.extra_columns!r}",
        )


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[Prompt, ...]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows skipped


def _rows(source: PromptSource) -> list[object]:
    """The source's rows; a JSONL line that is not UTF-8 or not JSON becomes the marker string of its skip reason."""
    if source.format is PromptFormat.JSONL:
        path = Path(source.path)
        if not path.is_file():
            raise ConfigError(f"prompts.path: no such file {path}")
        rows: list[object] = []
        for raw in path.read_bytes().splitlines():
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
                json.dumps(row, ensure_ascii=False).encode("utf-8")  # an escaped lone surrogate ("\\ud800") is no text
                rows.append(row)
            except UnicodeError:
                rows.append(_NOT_UTF8)
            except (ValueError, RecursionError):  # not JSON; an integer of over 4300 digits; nesting too deep
                rows.append(_BAD_JSON)
        return rows
    if source.format is PromptFormat.PARQUET:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(source.path)
        except (OSError, pa.ArrowException) as e:
            raise ConfigError(f"prompts.path: cannot read {source.path} as Parquet ({e})") from None
        if source.field not in table.column_names:
            raise ConfigError(
                f"prompts.field: {source.path} has no column {source.field!r} (columns: {table.column_names})"
            )
        return table.to_pylist()
    try:
        import datasets
    except ImportError:
        raise ConfigError("prompts.format: hf needs the `datasets` package: pip install datasets") from None
    path = Path(source.path)
    try:
        if path.is_dir() and (path / "dataset_info.json").exists():
            data = datasets.load_from_disk(str(path))
            data = data[source.split] if isinstance(data, datasets.DatasetDict) else data
        else:
            data = datasets.load_dataset(source.path, split=source.split)
    except (OSError, ValueError, KeyError) as e:  # missing dataset, unknown split, no network
        raise ConfigError(
            f"prompts.path: cannot load dataset {source.path!r} split {source.split!r}: {type(e).__name__}: {e}"
        ) from None
    if source.field not in data.column_names:
        raise ConfigError(
            f"prompts.field: dataset {source.path} has no column {source.field!r} (columns: {data.column_names})"
        )
    return list(data)


def load_prompts(source: PromptSource) -> PromptSet:
    """The usable prompts, in file order, each once (fit_to_policy then applies the policy's length limit)."""
    prompts, skipped, seen = [], Counter(), set()
    for row in _rows(source):
        value = row.get(source.field) if isinstance(row, dict) else None
        if isinstance(row, _Unreadable):
            skipped[row.reason] += 1
        elif not isinstance(row, dict):
            skipped["not a JSON object"] += 1
        elif value is None:
            skipped[f"missing field {source.field!r}"] += 1
        else:
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
            key = (prompt.text, prompt.messages)
            if key in seen:
                skipped["duplicate"] += 1
            else:
                seen.add(key)
                prompts.append(prompt)
    if not prompts:
        raise ConfigError(f"prompts.path: no usable prompt in {source.path} (skipped: {dict(skipped) or 'none'})")
    return PromptSet(prompts=tuple(prompts), skipped=dict(skipped))


def fit_to_policy(prompt_set: PromptSet, tokenizer, max_tokens: int | None) -> PromptSet:
    """Render every prompt with the policy tokenizer (as the actors will) and skip, counted, those that render to no
    tokens or to more than max_tokens (the sampler would refuse them mid-run) and those the chat template refuses.
    Chat prompts with a tokenizer that has no chat template are a config error."""
    from jinja2 import TemplateError

    from actors.prompt_rendering import render

    kept, skipped = [], Counter(prompt_set.skipped)
    for prompt in prompt_set.prompts:
        try:
            length = len(render(tokenizer, prompt).token_ids)
        except ValueError as e:
            raise ConfigError(f"models.policy: {e}") from None
        except TemplateError as e:  # the template refuses the messages (a role it does not know, an order)
            skipped[f"refused by the chat template ({e})"] += 1
            continue
        if length == 0:
            skipped["renders to no tokens"] += 1
        elif max_tokens is not None and length > max_tokens:
            skipped[f"longer than {max_tokens} tokens"] += 1
        else:
            kept.append(prompt)
    if not kept:
        raise ConfigError(f"prompts.path: no usable prompt (skipped: {dict(skipped)})")
    return PromptSet(prompts=tuple(kept), skipped=dict(skipped))


@dataclass(frozen=True)
class PromptCursor:
    """Position in the (per-epoch shuffled) prompt stream; saved in checkpoints so a resume continues exactly."""

    epoch: int = 0
    index: int = 0


def take(
    prompts: tuple[Prompt, ...],
    cursor: PromptCursor,
    count: int,
    seed: int,
    shuffle: bool,
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
