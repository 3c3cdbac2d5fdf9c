"""Weights as Hugging Face safetensors: one file, or numbered shards with model.safetensors.index.json."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def write_shards(buckets: Iterable[Mapping[str, torch.Tensor]], out: Path) -> None:
    """One shard per bucket, named the way transformers and vLLM expect."""
    out.mkdir(parents=True, exist_ok=True)
    tmp_names, weight_map, total = [], {}, 0
    for i, bucket in enumerate(buckets):
        name = f"shard-{i:05d}.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in bucket.items()}, out / name, metadata={"format": "pt"})
        tmp_names.append((name, list(bucket)))
        total += sum(v.numel() * v.element_size() for v in bucket.values())
    if len(tmp_names) == 1:
        (out / tmp_names[0][0]).rename(out / SINGLE)
        return
    n = len(tmp_names)
    for i, (tmp, keys) in enumerate(tmp_names):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        (out / tmp).rename(out / final)
        weight_map.update(dict.fromkeys(keys, final))
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def file_of_each(model_dir: Path) -> dict[str, Path]:
    """name -> safetensors file holding it, for a directory written by write_shards or save_pretrained."""
    if (model_dir / INDEX).is_file():
        weight_map = json.loads((model_dir / INDEX).read_text())["weight_map"]
        return {k: model_dir / v for k, v in weight_map.items()}
    if (model_dir / SINGLE).is_file():
        with safe_open(model_dir / SINGLE, framework="pt") as f:
            return dict.fromkeys(f.keys(), model_dir / SINGLE)
    raise FileNotFoundError(f"{model_dir} has neither {SINGLE} nor {INDEX}")


def read(model_dir: Path, names: Iterable[str]) -> Iterable[tuple[str, torch.Tensor]]:
    """(name, tensor) one at a time, so memory holds a single tensor."""
    files = file_of_each(model_dir)
    for name in names:
        if name not in files:
            raise KeyError(f"{model_dir} has no tensor {name!r}")
        with safe_open(files[name], framework="pt") as f:
            yield name, f.get_tensor(name)
