"""Checks and stages a sampler's incoming WeightUpdates before any tensor reaches a live model.

Shared by the vLLM and the HF-transformers samplers so both refuse the same bad pushes with the same
message and apply bucketed pushes the same way:
- every tensor is checked against the Hugging Face checkpoint's parameter names, shapes and dtype
  first, so a bad push leaves the serving weights untouched;
- buckets of one version are held until the bucket marked `last_bucket`, then applied together: a
  sampler never serves a half-updated model, and never tags samples with a version it only half holds;
  they must arrive numbered in order from 0, so a push with a bucket refused or lost is refused whole;
- a partial update is completed to whole fused layers from a host copy of the current weights. vLLM
  fuses q/k/v and gate/up into one layer and re-processes a layer as a whole; a layer given only
  q_proj would otherwise keep garbage in its k/v rows (the tiny model then emits one token forever).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from bond.records import Role, WeightUpdate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


class WeightStaging:
    """Validates WeightUpdates for one model and releases complete, ordered sets of tensors to load.

    `fused` maps a fused module name to the checkpoint modules it is made of (vLLM's
    `packed_modules_mapping`, e.g. {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}); names whose module
    is the same after fusing form one group that must be loaded whole.
    """

    def __init__(
        self,
        specs: Mapping[str, ParamSpec],
        role: Role,
        version: int,
        fused: Mapping[str, Iterable[str]] | None = None,
        host_weights: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.specs = dict(specs)
        self.role = role
        self.version = version
        self.fused = {name: list(parts) for name, parts in (fused or {}).items()}
        self._part_to_fused = {part: name for name, parts in (fused or {}).items() for part in parts}
        self._groups: dict[str, list[str]] = {}
        for name in self.specs:
            self._groups.setdefault(self._group_key(name), []).append(name)
        self.host_weights = host_weights  # HF name -> CPU tensor of the weights now served, or None
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_version: int | None = None
        self._next_bucket = 0  # the bucket of the pending push due next

    def _group_key(self, name: str) -> str:
        module, _, _ = name.rpartition(".")
        prefix, _, leaf = module.rpartition(".")
        leaf = self._part_to_fused.get(leaf, leaf)
        return f"{prefix}.{leaf}" if prefix else leaf

    def check(self, update: WeightUpdate) -> None:
        """Raise ValueError for a push this sampler cannot take; nothing is staged then."""
        if update.role is not self.role:
            raise ValueError(f"weight update for role {update.role.value!r} sent to a {self.role.value!r} sampler")
        if update.version < self.version:
            raise ValueError(f"stale weight update: version {update.version} < version held {self.version}")
        if not update.tensors:
            raise ValueError(f"weight update version {update.version} carries no tensors")
        for name, tensor in update.tensors.items():
            spec = self.specs.get(name)
            if spec is None:
                close = sorted(n for n in self.specs if n.rpartition(".")[2] == name.rpartition(".")[2])[:3]
                raise ValueError(
                    f"weight update: unknown parameter {name!r} (not in the model's checkpoint; "
                    f"names look like {close or sorted(self.specs)[:3]})"
                )
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"weight update: {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
            if tuple(tensor.shape) != spec.shape:
                raise ValueError(
                    f"weight update: parameter {name!r} has shape {tuple(tensor.shape)}, the model expects {spec.shape}"
                )
            if tensor.dtype != spec.dtype:
                raise ValueError(
                    f"weight update: parameter {name!r} has dtype {tensor.dtype}, the sampler "
                    f"serves {spec.dtype} (convert on the sending side)"
                )
            # One reduction (NaN/inf propagate through a sum) instead of a bool copy of every tensor;
            # the exact elementwise check runs only to confirm a hit.
            if (
                tensor.is_floating_point()
                and not bool(torch.isfinite(tensor.sum()))
                and not bool(torch.isfinite(tensor).all())
            ):
                raise ValueError(f"weight update: parameter {name!r} has non-finite values")

    def stage(self, update: WeightUpdate) -> dict[str, torch.Tensor] | None:
        """Check and hold `update`; on its last bucket return every tensor to load now (else None).

        A push's buckets must come in order from bucket 0, and a push with a bucket missing is refused whole. A
        bucket can be missing because it was refused here while the sender had already queued the later ones (the
        object-store push keeps several in flight), because it was never delivered, or because this actor was
        restarted mid-push; staging the rest would apply a push without it."""
        self._check_order(update)
        try:
            self.check(update)
        except ValueError:
            self.discard()  # the push is broken: its later buckets now fail _check_order
            raise
        self._pending_version, self._next_bucket = update.version, update.bucket + 1
        self._pending.update(update.tensors)
        if not update.last_bucket:
            return None
        pending = self._pending
        self.discard()
        return self._complete_groups(pending)  # if this refuses the push, all of its buckets are gone

    def _check_order(self, update: WeightUpdate) -> None:
        held = self._pending_version
        if held is not None and update.version < held:
            raise ValueError(f"weight update version {update.version} arrived while version {held} was half received")
        if update.bucket == 0:  # a push starts: whatever is half received will not be completed
            if held is not None:
                log.warning("dropping the unfinished weight update version %d for version %d", held, update.version)
            self.discard()
            return
        if (update.version, update.bucket) != (held, self._next_bucket):
            expected = f"bucket {self._next_bucket} of version {held}" if held is not None else "a push's bucket 0"
            self.discard()
            raise ValueError(
                f"weight update version {update.version}: bucket {update.bucket} arrived where {expected} was due "
                f"(an earlier bucket of this push was refused or never arrived): the push is refused whole"
            )

    def discard(self) -> None:
        """Forget a half-received push (its sender is gone or one of its buckets was refused)."""
        self._pending, self._pending_version, self._next_bucket = {}, None, 0

    def without_host_copy(self) -> WeightStaging:
        """The same checks and version, no host weights: what a worker process needs to validate a push."""
        return WeightStaging(self.specs, self.role, self.version, fused=self.fused)

    def _complete_groups(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add the current values of the other members of every fused layer the update touches."""
        out = dict(tensors)
        for key in {self._group_key(n) for n in tensors}:
            missing = [n for n in self._groups[key] if n not in out]
            if not missing:
                continue
            if self.host_weights is None:
                raise ValueError(
                    f"weight update: {sorted(n for n in self._groups[key] if n in out)} are fused "
                    f"with {missing} in one layer; send them together (this sampler keeps no host "
                    f"copy to complete the layer)"
                )
            out.update({n: self.host_weights[n] for n in missing})
        # Layer order, so each fused layer is processed as soon as it is whole (vLLM buffers the rest).
        order = {n: i for i, n in enumerate(self.specs)}
        return {n: out[n] for n in sorted(out, key=order.__getitem__)}

    def applied(self, tensors: Mapping[str, torch.Tensor], version: int) -> None:
        """Record that `tensors` now serve as `version` (called after a successful load)."""
        if self.host_weights is not None:
            for name, t in tensors.items():
                held = self.host_weights.get(name)  # None: lm_head of a tied checkpoint
                if held is not None and held.data_ptr() != t.data_ptr():
                    held.copy_(t)
        self.version = version
