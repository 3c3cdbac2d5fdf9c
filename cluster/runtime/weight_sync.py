"""Versioned weight pushes from the learner to the actors, by one of two transports.

object_store: the learner's `weights(role)` is a streaming Ray generator: each bucket is put into the
object store ONCE, by the learner rank that gathered it, and every actor of the role gets that same
object (a local read on the same node). The learner refills the same bucket buffers from push to push and the
driver never touches the tensors; it keeps a few buckets in flight to the actors (BUCKETS_IN_FLIGHT), so the
round trips overlap. The generator is not throttled: if the actors take the buckets more slowly than the learner
fills them, the object store holds the ones waiting (spilling to disk past its capacity, as Ray does).

collective: learner rank 0 broadcasts each bucket over the role's weight group (actors/weight_broadcast.py:
gloo on CPU, NCCL on CUDA) whose other members are every engine worker of every actor of the role. One
group per role, not one shared group with role-tagged buckets: a broadcast reaches every member, so a
shared group would ship the policy's bytes to the anchor actors too (twice the traffic for nothing).
The driver starts the learner's send and every actor's receive together and waits with a deadline.

Either way each actor answers with the version it now holds; a mismatch is an error (never a silent
partial update), and so is a peer that is gone (a clear WeightSyncError within the timeout, never a hang).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence

import ray

from actors.weight_broadcast import GroupAddress
from bond.records import Role
from cluster.config.job import WeightSyncMethod
from cluster.core import SyncReport
from cluster.runtime.components import WeightSyncError, confirmed_version

# Measured here (`python -m bench sync`, learner actor -> vLLM actors with plain weights, best of 5, 2 CPU cores
# shared with other work, 2026-12-02), policy alone / a step's sync (policy + anchor):
#   tiny policy 1.8 MB:  object_store 18 / 18 ms (anchor follows), collective 12 / 23 ms (both pushed); memcpy 0.2 ms
#   random 27 M 109 MB:  object_store 159 / 155 ms (anchor follows), collective 252 / 444 ms (both pushed); memcpy 10 ms
# With flat buckets (actors/weight_flat.py) the object store beats gloo on CPU from 27 M up, and only it carries
# the anchor's actor-side EMA; at the tiny size the two are within a few ms. So auto: the object store on CPU, the
# collective on GPU (NCCL: no device -> host -> object store trip).


# Buckets sent to the actors before the oldest is confirmed: enough to overlap the round trips, few enough that the
# object store holds a handful of buckets, never the whole model.
BUCKETS_IN_FLIGHT = 4


def choose_method(requested: WeightSyncMethod, on_gpu: bool) -> WeightSyncMethod:
    """auto: collective on GPU, the object store on CPU (measured above)."""
    if requested is not WeightSyncMethod.AUTO:
        return requested
    return WeightSyncMethod.COLLECTIVE if on_gpu else WeightSyncMethod.OBJECT_STORE


def push_weights(learner_ranks: Sequence, actors: Sequence, role: Role) -> SyncReport:
    """Stream `role`'s weights from the learner ranks (all take part: ZeRO-3 gathers are collective) to `actors`.

    Up to BUCKETS_IN_FLIGHT buckets are sent before the oldest is confirmed: an actor runs one caller's tasks in the
    order they were sent, so its loads keep their order, and the round trips overlap instead of adding up. Buckets
    are numbered, and an actor refuses a push with one refused or missing (actors/weight_staging.py); the error is
    raised here once the buckets already sent have been answered, and no more are sent."""
    t0 = time.perf_counter()
    streams = [rank.weights.options(num_returns="streaming").remote(role) for rank in learner_ranks]
    buckets, in_flight, confirmed = 0, deque(), []
    for bucket_ref in _buckets(streams):
        in_flight.append([actor.load_weights.remote(bucket_ref) for actor in actors])
        buckets += 1
        if len(in_flight) > BUCKETS_IN_FLIGHT:
            confirmed = _answers(in_flight)
    while in_flight:
        confirmed = _answers(in_flight)
    num_bytes = ray.get(learner_ranks[0].last_export_bytes.remote())
    version = confirmed_version(role, confirmed, ray.get(learner_ranks[0].version.remote(role)), buckets)
    return SyncReport(
        role=role, version=version, buckets=buckets, num_bytes=num_bytes, seconds=time.perf_counter() - t0
    )


def _answers(in_flight: deque) -> list[int]:
    """The actors' answers to the oldest bucket in flight (the versions they hold after it). On a failure every bucket
    already sent is awaited first (each refuses, or the actor is gone), so none is still loading once this raises."""
    oldest = in_flight.popleft()
    try:
        return ray.get(oldest)
    except Exception:
        sent = oldest + [ref for refs in in_flight for ref in refs]  # ray.get may raise before all answers are in
        ray.wait(sent, num_returns=len(sent), fetch_local=False)
        in_flight.clear()
        raise


def _buckets(streams: list) -> Iterator[ray.ObjectRef]:
    """Rank 0's buckets as they come, every rank's stream watched meanwhile: a rank that dies fails its own stream
    at once, while the ranks waiting for it in a collective (a ZeRO-3 gather) would fail only at learner.timeout_s
    (30 min). The other ranks yield nothing (they join the gathers); an error of theirs is raised here."""
    waiting = list(streams)
    while waiting:
        for stream in ray.wait(waiting, num_returns=1, fetch_local=False)[0]:  # the driver never holds a bucket
            ref = next(stream, None)
            if ref is None:
                waiting.remove(stream)
            elif stream is streams[0]:
                yield ref
            else:
                ray.get(ref)


def open_weight_group(learner_ranks: Sequence, actors: Sequence, role: Role, backend: str, timeout_s: float) -> None:
    """Form `role`'s weight group: learner rank 0 is rank 0, then each actor's engine workers in turn."""
    workers = _wait(
        [a.engine_workers.remote() for a in actors],
        [f"{role} actor {i}" for i in range(len(actors))],
        timeout_s,
        f"asking the {role} actors for their engine workers",
    )
    host, port = ray.get(learner_ranks[0].weight_group_port.remote())
    address = GroupAddress(host=host, port=port, world_size=1 + sum(workers), backend=backend, timeout_s=timeout_s)
    offsets = [1 + sum(workers[:i]) for i in range(len(actors))]
    refs = [learner_ranks[0].join_weight_group.remote(role, address)]
    refs += [a.join_weight_group.remote(address, off) for a, off in zip(actors, offsets, strict=True)]
    _wait(
        refs,
        ["learner rank 0"] + [f"{role} actor {i}" for i in range(len(actors))],
        timeout_s,
        f"forming the {role} weight group ({backend}, {address.world_size} members)",
    )


def push_weights_collective(learner_ranks: Sequence, actors: Sequence, role: Role, timeout_s: float) -> SyncReport:
    """Learner rank 0 broadcasts `role`'s buckets over the role's group; every rank gathers, every actor receives."""
    t0 = time.perf_counter()
    sends = [rank.send_weights.remote(role) for rank in learner_ranks]
    receives = [actor.receive_weights.remote() for actor in actors]
    names = [f"learner rank {r}" for r in range(len(sends))] + [f"{role} actor {i}" for i in range(len(receives))]
    results = _wait(sends + receives, names, timeout_s, f"the collective {role} weight push")
    buckets, num_bytes = results[0]
    version = confirmed_version(role, results[len(sends) :], ray.get(learner_ranks[0].version.remote(role)), buckets)
    return SyncReport(
        role=role,
        version=version,
        buckets=buckets,
        num_bytes=num_bytes,
        seconds=time.perf_counter() - t0,
        method=WeightSyncMethod.COLLECTIVE,
    )


def _wait(refs: list, names: list[str], timeout_s: float, what: str) -> list:
    """ray.get of every ref within timeout_s; the first failure or the deadline is a WeightSyncError naming the peer."""
    deadline = time.monotonic() + timeout_s
    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise WeightSyncError(
                f"{what}: no answer from {[names[index[r]] for r in pending]} within "
                f"{timeout_s:g} s (run.weight_sync_timeout_s); a peer is gone or stuck, and the "
                f"weight group cannot be used again"
            )
        i = index[ready[0]]
        try:
            results[i] = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 (re-raised with the peer's name)
            raise WeightSyncError(f"{what}: {names[i]} failed: {exc}") from exc
    return results
