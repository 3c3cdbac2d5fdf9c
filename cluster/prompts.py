"""Prompt sources (JSONL, Parquet, a Hugging Face dataset) and the checkpointed cursor that walks them.

Bad rows (missing field, not a string, empty after stripping) are skipped and counted by reason, never
silently dropped; a source with no usable prompt is an error.
"""

from __future__ import annotations

import enum
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bond.config import check_types, require


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
        return [{source.field: v} for v in table.column(source.field).to_pylist()]
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
    return [{source.field: v} for v in data[source.field]]


def load_prompts(source: PromptSource) -> PromptSet:
    prompts, skipped = [], Counter()
    for row in _rows(source):
        value = row.get(source.field) if isinstance(row, dict) else None
        if value is None:
            skipped[f"missing field {source.field!r}"] += 1
        elif not isinstance(value, str):
            skipped[f"not a string ({type(value).__name__})"] += 1
        elif not value.strip():
            skipped["empty"] += 1
        else:
            prompts.append(value.strip())
    if not prompts:
        raise ValueError(f"prompts: no usable prompt in {source.path} (skipped: {dict(skipped) or 'none'})")
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
