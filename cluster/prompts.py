"""Prompt sources (JSONL, Parquet, a Hugging Face dataset) and the checkpointed cursor that walks them.

Bad rows (not UTF-8, invalid JSON, not an object, missing field, not a string, empty after stripping, a
duplicate, longer than the model's context) are skipped and counted by reason, never silently dropped. A
source that cannot be read at all, or has no usable prompt, is a ConfigError naming the field.
"""

from __future__ import annotations

import enum
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bond.config import ConfigError, check_types, require


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
    """Column / JSON key holding the prompt text."""
    split: str = "train"
    """Dataset split (hf only)."""
    shuffle: bool = True
    """Reshuffle the prompts every epoch (deterministically from `seed`)."""
    seed: int = 0
    """Seed of the per-epoch shuffle."""

    def __post_init__(self) -> None:
        check_types(self)
        require(bool(self.path), "path", "is empty")
        require(bool(self.field), "field", "is empty")


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[str, ...]
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
                rows.append(json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError:
                rows.append(_NOT_UTF8)
            except json.JSONDecodeError:
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
            raise ConfigError(f"prompts.field: {source.path} has no column {source.field!r} "
                              f"(columns: {table.column_names})")
        return [{source.field: v} for v in table.column(source.field).to_pylist()]
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
        raise ConfigError(f"prompts.path: cannot load dataset {source.path!r} split {source.split!r}: "
                          f"{type(e).__name__}: {e}") from None
    if source.field not in data.column_names:
        raise ConfigError(f"prompts.field: dataset {source.path} has no column {source.field!r} "
                          f"(columns: {data.column_names})")
    return [{source.field: v} for v in data[source.field]]


def load_prompts(source: PromptSource, max_tokens: int | None = None,
                 count_tokens: Callable[[Sequence[str]], Sequence[int]] | None = None) -> PromptSet:
    """The usable prompts, in file order, each once. With max_tokens and count_tokens (the policy's tokenizer),
    prompts longer than max_tokens are skipped too: the sampler would refuse them mid-run."""
    prompts, skipped, seen = [], Counter(), set()
    for row in _rows(source):
        value = row.get(source.field) if isinstance(row, dict) else None
        if isinstance(row, _Unreadable):
            skipped[row.reason] += 1
        elif not isinstance(row, dict):
            skipped["not a JSON object"] += 1
        elif value is None:
            skipped[f"missing field {source.field!r}"] += 1
        elif not isinstance(value, str):
            skipped[f"not a string ({type(value).__name__})"] += 1
        elif not value.strip():
            skipped["empty"] += 1
        elif value.strip() in seen:
            skipped["duplicate"] += 1
        else:
            seen.add(value.strip())
            prompts.append(value.strip())
    if max_tokens is not None and count_tokens is not None and prompts:
        lengths = count_tokens(prompts)
        kept = [p for p, n in zip(prompts, lengths, strict=True) if n <= max_tokens]
        if len(kept) < len(prompts):
            skipped[f"longer than {max_tokens} tokens"] += len(prompts) - len(kept)
        prompts = kept
    if not prompts:
        raise ConfigError(f"prompts.path: no usable prompt in {source.path} (skipped: {dict(skipped) or 'none'})")
    return PromptSet(prompts=tuple(prompts), skipped=dict(skipped))


@dataclass(frozen=True)
class PromptCursor:
    """Position in the (per-epoch shuffled) prompt stream; saved in checkpoints so a resume continues exactly."""

    epoch: int = 0
    index: int = 0


def take(prompts: tuple[str, ...], cursor: PromptCursor, count: int, seed: int, shuffle: bool,
         ) -> tuple[list[tuple[int, str]], PromptCursor]:
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
