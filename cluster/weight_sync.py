"""Versioned weight pushes from the learner to the actors.

CPU (and any cluster without NCCL between learner and actors): the Ray object store. The learner's
`weights(role)` is a streaming Ray generator: each bucket is put into the object store ONCE, by the
learner rank that gathered it, and every actor of the role gets that same object (a local read on the
same node). Buckets are pushed one at a time, so neither the learner nor the driver ever holds the whole
model, and the driver never touches the tensors. Each actor answers with the version it now holds; a
mismatch is an error (never a silent partial update).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import ray

from bond.records import Role


@dataclass(frozen=True)
class SyncReport:
    role: Role
    version: int  # the version every actor confirmed
    buckets: int
    num_bytes: int
    seconds: float


class WeightSyncError(RuntimeError):
    pass


def confirmed_version(role: Role, confirmed: Sequence[int], expected: int, buckets: int) -> int:
    """The version every actor of `role` now holds; an error unless all of them hold the learner's."""
    if buckets == 0:
        raise WeightSyncError(f"learner exported no {role} weights")
    if set(confirmed) != {expected}:
        raise WeightSyncError(f"{role} actors confirmed versions {list(confirmed)}, learner is at {expected}")
    return expected


def push_weights(learner_ranks: Sequence, actors: Sequence, role: Role) -> SyncReport:
    """Stream `role`'s weights from the learner ranks (all take part: ZeRO-3 gathers are collective) to `actors`."""
    t0 = time.perf_counter()
    streams = [rank.weights.options(num_returns="streaming").remote(role) for rank in learner_ranks]
    buckets, confirmed = 0, []
    for bucket_ref in streams[0]:  # rank 0 yields (WeightUpdate) buckets; other ranks join the gathers
        confirmed = ray.get([actor.load_weights.remote(bucket_ref) for actor in actors])
        buckets += 1
    for stream in streams[1:]:
        for ref in stream:
            ray.get(ref)  # surface errors of the other ranks
    num_bytes = ray.get(learner_ranks[0].last_export_bytes.remote())
    version = confirmed_version(role, confirmed, ray.get(learner_ranks[0].version.remote(role)), buckets)
    return SyncReport(role=role, version=version, buckets=buckets, num_bytes=num_bytes,
                      seconds=time.perf_counter() - t0)
