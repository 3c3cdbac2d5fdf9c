"""The collective weight push: one process group per role between learner rank 0 and every engine worker.

Wire format, per bucket of a push (one role, one version), all broadcast from group rank 0 (the learner):
  1. an int64 header length,  2. the header (UTF-8 JSON: role, version, last_bucket, bucket, names, dtypes, shapes,
  byte offsets),  3. ONE flat uint8 buffer holding every tensor of the bucket.
Three broadcasts per bucket, never one per parameter: open-instruct's per-parameter round trips, not the
wire, were what made its sync take minutes. The receiver allocates the bucket's buffer from the header
before the bytes arrive and splits it into views (no copy).

The group is built statelessly from a TCPStore (vLLM's StatelessProcessGroup idea): it lives beside the
learner's own default group (DeepSpeed's data-parallel ranks) and beside vLLM's, touches neither, and
uses the backend object directly (`ProcessGroupGloo` / `ProcessGroupNCCL`), whose `broadcast` takes group
ranks. gloo on CPU, NCCL on CUDA: the same code, so CPU CI runs exactly the broadcast logic a GPU job runs.

Receivers validate through actors/weight_staging.py, like the object-store path: a bad bucket (unknown
name, wrong shape or dtype, non-finite values) is refused before anything reaches the live model; the
receiver still drains the rest of the push so the sender is never left blocked, then raises.
A peer that dies makes the others' broadcast fail (gloo: at once, "Connection closed by peer"; otherwise
after `timeout_s`), never hang.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from actors.weight_flat import aligned_offsets, backing_buffer, split
from actors.weight_staging import WeightStaging
from bond.records import Role, WeightUpdate


@dataclass(frozen=True)
class GroupAddress:
    """Where and how to join one role's weight group. Rank 0 is the learner (it hosts the store)."""

    host: str
    port: int
    world_size: int  # 1 + every engine worker of every actor of the role
    backend: str  # "gloo" (CPU) or "nccl" (CUDA)
    timeout_s: float  # a broadcast waiting longer for a peer fails


class WeightGroup:
    """One member of a role's weight group."""

    def __init__(self, address: GroupAddress, rank: int, device: torch.device) -> None:
        if not 0 <= rank < address.world_size:
            raise ValueError(f"weight group rank {rank} outside world size {address.world_size}")
        if address.backend not in ("gloo", "nccl"):
            raise ValueError(f"weight group backend must be gloo or nccl, got {address.backend!r}")
        timeout = datetime.timedelta(seconds=address.timeout_s)
        self.rank, self.world_size, self.device = rank, address.world_size, device
        self._store = dist.TCPStore(
            address.host, address.port, address.world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False
        )
        store = dist.PrefixStore("jbond-weights", self._store)
        if address.backend == "gloo":
            self._pg = dist.ProcessGroupGloo(store, rank, address.world_size, timeout)
        else:
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self._pg = dist.ProcessGroupNCCL(store, rank, address.world_size, options)

    def _broadcast(self, tensor: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self._pg.broadcast([tensor], opts).wait()

    # ---- sender (group rank 0: the learner) --------------------------------------------------------

    def send(self, update: WeightUpdate) -> None:
        """Broadcast one bucket: header, then one flat buffer."""
        names = list(update.tensors)
        tensors = [update.tensors[n].detach().contiguous() for n in names]
        offsets, end = aligned_offsets([t.numel() * t.element_size() for t in tensors])
        header = {
            "role": update.role.value,
            "version": update.version,
            "last_bucket": update.last_bucket,
            "bucket": update.bucket,
            "names": names,
            "dtypes": [str(t.dtype) for t in tensors],
            "shapes": [list(t.shape) for t in tensors],
            "offsets": offsets,
            "nbytes": end,
        }
        raw = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8).to(self.device)
        self._broadcast(torch.tensor([raw.numel()], dtype=torch.int64, device=self.device))
        self._broadcast(raw)
        flat = backing_buffer(tensors, offsets, end)  # the learner's export fills its buckets in this layout
        if flat is None or flat.device != self.device:
            flat = torch.empty(end, dtype=torch.uint8, device=self.device)
            for t, off in zip(tensors, offsets, strict=True):
                flat[off : off + t.numel() * t.element_size()].copy_(t.reshape(-1).view(torch.uint8))
        self._broadcast(flat)

    # ---- receivers -----------------------------------------------------------------------------------

    def receive_bucket(self) -> tuple[dict, torch.Tensor]:
        """The next bucket: its header and its flat buffer (allocated from the header before the bytes arrive)."""
        length = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._broadcast(length)
        raw = torch.empty(int(length.item()), dtype=torch.uint8, device=self.device)
        self._broadcast(raw)
        header = json.loads(bytes(raw.cpu().numpy()).decode())
        flat = torch.empty(header["nbytes"], dtype=torch.uint8, device=self.device)
        self._broadcast(flat)
        return header, flat

    def receive_push(self, staging: WeightStaging, apply: Callable[[dict[str, torch.Tensor]], object]) -> int:
        """Receive a whole push; stage every bucket, `apply` them together after the last one.

        Returns the version now held. A refused bucket raises ValueError, after the
        rest of the push was drained, with the live model untouched.
        """
        error: Exception | None = None
        while True:
            header, flat = self.receive_bucket()
            if error is None:
                try:
                    tensors = split(header["names"], header["dtypes"], header["shapes"], header["offsets"], flat)
                    update = WeightUpdate(
                        Role(header["role"]),
                        int(header["version"]),
                        tensors,
                        last_bucket=bool(header["last_bucket"]),
                        bucket=int(header["bucket"]),
                    )
                    ready = staging.stage(update)
                except (ValueError, KeyError) as exc:  # keep draining: the sender broadcasts the whole push regardless
                    error = exc
                    staging.discard()
            if header["last_bucket"]:
                break
        if error is not None:
            raise error
        assert ready is not None  # the last bucket of a staged push releases it
        apply(ready)
        staging.applied(ready, update.version)
        return staging.version
