"""RLDS-style episode logs (docs/algorithm.md section 6) written with pyarrow to Parquet, one file per training step.

Each sampled completion is a one-step episode: observation = prompt, action = completion, with its
reward and full provenance (role, weights version, reward model, token log-probs). Files are written to
a temporary name and renamed, so a crash never leaves a half-written file; a resumed run overwrites the
files of the steps it repeats.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bond.records import Completion, Role, ScoredCompletion

SCHEMA = pa.schema(
    [
        ("episode_id", pa.string()),
        ("step", pa.int32()),  # RLDS step index within the episode (0: single-turn)
        ("is_first", pa.bool_()),
        ("is_last", pa.bool_()),
        ("is_terminal", pa.bool_()),
        ("observation", pa.string()),  # the prompt
        ("action", pa.string()),  # the completion text
        ("reward", pa.float64()),
        ("discount", pa.float32()),
        ("train_step", pa.int64()),  # learner step this sample was used in
        ("prompt_id", pa.int64()),
        ("role", pa.string()),  # policy | anchor | reference
        ("weights_version", pa.int64()),
        ("reward_model_id", pa.string()),
        ("finish_reason", pa.string()),
        ("token_ids", pa.list_(pa.int32())),
        ("logprobs", pa.list_(pa.float32())),
        ("prompt_token_ids", pa.list_(pa.int32())),  # what the engine read: with token_ids, the learner's input
    ]
)


def episode_table(train_step: int, samples: Sequence[ScoredCompletion]) -> pa.Table:
    return pa.Table.from_pylist([_row(train_step, j, s) for j, s in enumerate(samples)], schema=SCHEMA)


def _row(train_step: int, j: int, s: ScoredCompletion) -> dict:
    """Sample j of the step as a one-step episode."""
    c = s.completion
    return {
        "episode_id": f"{train_step}-{c.role.value}-{c.prompt_id}-{j}",
        "step": 0,
        "is_first": True,
        "is_last": True,
        "is_terminal": c.finish_reason == "stop",
        "observation": c.prompt,
        "action": c.text,
        "reward": s.reward,
        "discount": 1.0,
        "train_step": train_step,
        "prompt_id": c.prompt_id,
        "role": c.role.value,
        "weights_version": c.weights_version,
        "reward_model_id": s.reward_model_id,
        "finish_reason": c.finish_reason,
        "token_ids": list(c.token_ids),
        "logprobs": list(c.logprobs),
        "prompt_token_ids": list(c.prompt_token_ids),
    }


class EpisodeWriter:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, train_step: int, samples: Sequence[ScoredCompletion]) -> Path:
        path = self.directory / f"step_{train_step:07d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(episode_table(train_step, samples), tmp)
        os.replace(tmp, path)
        return path


def read_episodes(directory: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(Path(directory).glob("step_*.parquet"))])


def read_scored(path: Path) -> list[ScoredCompletion]:
    """The samples of one episode file, as the learner takes them (the prompt row's extras are not stored)."""
    return [
        ScoredCompletion(
            Completion(
                prompt_id=r["prompt_id"],
                prompt=r["observation"],
                prompt_token_ids=tuple(r["prompt_token_ids"]),
                token_ids=tuple(r["token_ids"]),
                text=r["action"],
                logprobs=tuple(r["logprobs"]),
                role=Role(r["role"]),
                weights_version=r["weights_version"],
                finish_reason=r["finish_reason"],
            ),
            reward=r["reward"],
            reward_model_id=r["reward_model_id"],
        )
        for r in pq.read_table(path).to_pylist()
    ]
