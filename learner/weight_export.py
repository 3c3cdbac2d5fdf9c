"""A learner's weights going out: bucketed pushes to the actors, safetensors / peft-adapter directories for
checkpoints, and Hugging Face exports (with LoRA: the merged model plus the adapter).

Every method that reads weights is a collective under ZeRO-3 (each bucket is gathered on every rank, one bucket
at a time, never the whole model): every rank calls it, and only rank 0 writes files.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from actors.weight_flat import flat_views
from bond.config import require
from bond.lora import merged_weight
from bond.records import Role, WeightUpdate
from learner import checkpoint_dir, lora, rendezvous, safetensors_shards
from learner.engine import Engine
from learner.shadow_weights import ShadowWeights

# Files besides the weights that make a model directory loadable (tokenizer, generation defaults).
SIDE_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "*.model",
    "chat_template*",
    "generation_config.json",
)


def check_bucket(bucket_bytes: int, names: Sequence[str], numels: Sequence[int], itemsize: int) -> None:
    """A bucket holds whole parameters, so the largest pushed one must fit (also a start-up check)."""
    largest = max(range(len(numels)), key=numels.__getitem__)
    nbytes = numels[largest] * itemsize
    require(
        nbytes <= bucket_bytes,
        "learner.bucket_bytes",
        f"{bucket_bytes} is smaller than parameter {names[largest]} ({nbytes} bytes); raise it to at least {nbytes}",
    )


class WeightExport:
    """The pushed parameters (the whole model, or with LoRA the adapters) of the policy and its two shadow copies.

    `names`/`params` are the pushed parameters in checkpoint names; `shadows` holds the anchor and the reference
    (laid out like `params`); `bucket_bytes` bounds one bucket in the export dtype."""

    def __init__(
        self,
        engine: Engine,
        names: Sequence[str],
        params: Sequence[torch.nn.Parameter],
        shadows: Mapping[Role, ShadowWeights],
        layout: lora.LoraLayout | None,
        dtype: torch.dtype,
        bucket_bytes: int,
        rank: int,
    ) -> None:
        self.engine, self.names, self.params, self.shadows = engine, list(names), list(params), dict(shadows)
        self.lora, self.dtype, self.bucket_bytes, self.rank = layout, dtype, bucket_bytes, rank
        self._kept: dict[int, dict[str, torch.Tensor]] = {}  # bucket -> its tensors, refilled by `updates(reuse=True)`
        check_bucket(bucket_bytes, self.names, [self._numel(p) for p in self.params], dtype.itemsize)

    @property
    def model_bytes(self) -> int:
        """Bytes of one copy of the pushed weights in the export dtype (what a weight push moves)."""
        return sum(self._numel(p) for p in self.params) * self.dtype.itemsize

    def updates(self, role: Role, version: int, reuse: bool = False) -> Iterator[WeightUpdate]:
        """The role's weights in buckets of at most bucket_bytes, full tensors on every rank, the last bucket
        marked last_bucket=True. reuse: refill the previous push's bucket tensors instead of fresh ones (no fresh
        pages to fault in), for a caller done with each bucket before the next push (Ray copies a yielded bucket
        into its object store at once); the tensors of an earlier push are then overwritten."""
        plan = self.bucket_plan(self.dtype)
        for b, indices in enumerate(plan):
            tensors = self.gather(role, indices, self.dtype, self._kept.get(b) if reuse else None)
            if reuse:
                self._kept[b] = tensors
            yield WeightUpdate(role=role, version=version, tensors=tensors, last_bucket=b == len(plan) - 1, bucket=b)

    def gather(
        self, role: Role, indices: list[int], dtype: torch.dtype, into: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Full copies of the role's parameters `indices` in `dtype`: views of one flat buffer filled by one copy
        (actors/weight_flat.py packs it for either transport without another), or `into`'s tensors refilled."""
        if role is Role.POLICY:
            params = [self.params[i] for i in indices]
            with self.engine.gathered(params):  # one bucket at a time under ZeRO-3, never the whole model
                return self._copy_out([p.data for p in params], indices, dtype, into)
        shadow = self.shadows[role]
        return self._copy_out([shadow.full(i) for i in indices], indices, dtype, into)

    def _copy_out(self, sources: list[torch.Tensor], indices: list[int], dtype: torch.dtype, into) -> dict:
        names = [self.names[i] for i in indices]
        if into is None or list(into) != names:
            into = dict(zip(names, flat_views([(s.shape, dtype) for s in sources], sources[0].device), strict=True))
        for name, source in zip(names, sources, strict=True):
            into[name].copy_(source.detach())
        return into

    def bucket_plan(self, dtype: torch.dtype, params: Sequence[torch.nn.Parameter] | None = None) -> list[list[int]]:
        """Indices of `params` (default: the pushed ones) grouped in order into buckets of <= bucket_bytes."""
        plan: list[list[int]] = [[]]
        used = 0
        for i, p in enumerate(self.params if params is None else params):
            nbytes = self._numel(p) * dtype.itemsize
            if plan[-1] and used + nbytes > self.bucket_bytes:
                plan.append([])
                used = 0
            plan[-1].append(i)
            used += nbytes
        return plan

    # ---- directories ---------------------------------------------------------------------------------------
    def write(self, role: Role, dtype: torch.dtype, out: Path) -> None:
        """The role's pushed weights as a directory: sharded safetensors in checkpoint names, or with LoRA the
        adapter as peft's save_pretrained writes it."""
        if self.lora is not None:
            self._write_adapter(role, dtype, out)
            return
        self._write_shards((self.gather(role, indices, dtype) for indices in self.bucket_plan(dtype)), out)

    def _write_shards(self, buckets: Iterator[dict[str, torch.Tensor]], out: Path) -> None:
        """Rank 0 writes the buckets as sharded safetensors."""
        if self.rank == 0:
            safetensors_shards.write_shards(buckets, out)
        else:
            for _ in buckets:  # the gathers are collectives: take part, write nothing
                pass

    def read(self, directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) of a directory `write` made, in the pushed parameters' order."""
        if self.lora is None:
            yield from safetensors_shards.read(directory, self.names)
            return
        with safe_open(str(directory / lora.ADAPTER_WEIGHTS), framework="pt") as f:
            missing = sorted(set(self.names) - set(f.keys()))
            if missing:
                raise checkpoint_dir.CheckpointError(
                    f"{directory} lacks adapter tensors {missing[:3]} (a checkpoint of another learner.lora setting?)"
                )
            for name in self.names:
                yield name, f.get_tensor(name)

    def export_hf(self, final: Path, model_dir: Path) -> None:
        """The policy as a Hugging Face model directory: safetensors, config and the side files of `model_dir`.
        With LoRA: the merged model (W0 + (alpha/r) B A: loadable without peft) and `adapter/` beside it."""
        partial = checkpoint_dir.partial_path(final)
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        if self.lora is None:
            self.write(Role.POLICY, self.dtype, partial)
        else:
            self._write_shards(self._merged_buckets(self.dtype), partial)
            self._write_adapter(Role.POLICY, self.dtype, partial / "adapter")
        if self.rank == 0:
            self.engine.module.config.save_pretrained(partial)
            for pattern in SIDE_FILES:
                for f in model_dir.glob(pattern):
                    shutil.copy2(f, partial / f.name)
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
        rendezvous.barrier()

    def _write_adapter(self, role: Role, dtype: torch.dtype, out: Path) -> None:
        """One file: adapters are small (the whole adapter is gathered, bucket by bucket, on every rank)."""
        tensors: dict[str, torch.Tensor] = {}
        for indices in self.bucket_plan(dtype):
            tensors.update(self.gather(role, indices, dtype))
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            save_file(
                {k: v.contiguous().cpu() for k, v in tensors.items()},
                out / lora.ADAPTER_WEIGHTS,
                metadata={"format": "pt"},
            )
            lora.write_adapter_config(self.engine.module, out)

    def _merged_buckets(self, dtype: torch.dtype) -> Iterator[dict[str, torch.Tensor]]:
        """The base weights with the policy's adapters merged in, in base checkpoint names, bucket by bucket
        (the adapters are gathered once, each base bucket when it is written)."""
        assert self.lora is not None
        adapters = self.gather(Role.POLICY, list(range(len(self.params))), torch.float32)
        names, params = self.lora.base_names, self.lora.base_params
        for indices in self.bucket_plan(dtype, params):
            with self.engine.gathered([params[i] for i in indices]):
                out = {}
                for i in indices:
                    weight = params[i].data.detach()
                    if i in self.lora.pairs:
                        a, b = (self.names[j] for j in self.lora.pairs[i])
                        weight = merged_weight(weight, adapters[a], adapters[b], self.lora.scaling)
                    out[names[i]] = weight.to(dtype=dtype, copy=True)
            yield out

    def _numel(self, p: torch.nn.Parameter) -> int:
        return math.prod(self.engine.full_shape(p))
