"""A served checkpoint on disk: its directory (a path or a hub id), its parameter specs and its tensors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from actors.weight_staging import ParamSpec

_EMBEDDING, _LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"


def checkpoint_dir(model: str) -> Path:
    """The local directory of a checkpoint given as a path or a hub id (the hub cache; no trust_remote_code)."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors"]))


def _stored(directory: Path) -> Iterator[tuple[str, Any]]:
    """(name, its open safetensors file) for every tensor of the checkpoint, file by file."""
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, st


def checkpoint_specs(directory: Path, dtype: torch.dtype) -> dict[str, ParamSpec]:
    """Parameter names and shapes from the safetensors headers (nothing is loaded); dtype is the served one."""
    if not any(directory.glob("*.safetensors")):
        raise ValueError(f"{directory}: no *.safetensors checkpoint (only safetensors checkpoints are served)")
    specs = {name: ParamSpec(tuple(st.get_slice(name).get_shape()), dtype) for name, st in _stored(directory)}
    config = json.loads((directory / "config.json").read_text())
    # A tied checkpoint stores only the embedding; a learner's state_dict still names lm_head.
    if config.get("tie_word_embeddings") and _LM_HEAD not in specs and _EMBEDDING in specs:
        specs[_LM_HEAD] = specs[_EMBEDDING]
    return specs


def checkpoint_tensors(directory: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: st.get_tensor(name).to(dtype).contiguous() for name, st in _stored(directory)}
