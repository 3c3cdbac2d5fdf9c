"""The learner on Ray (the LearnerGroup role): the data-parallel LearnerRank actors (learner_rank.py), the weight
pushes that sync each role's actors from them (routed by transport, with the anchor actors following the policy
push), and checkpoints. A rank that dies stops the job at once (LearnerDiedError, naming the newest checkpoint)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayError

from bond.divergence import KlEstimates
from bond.records import Batch, Completion, Role, StepStats
from cluster.config.job import JobConfig, SamplerBackend
from cluster.core import SyncReport
from cluster.runtime.components import WeightSyncError
from cluster.runtime.samplers import Fleet, actor_state
from cluster.runtime.weight_sync import (
    WeightSyncMethod,
    choose_method,
    open_weight_group,
    push_weights,
    push_weights_collective,
)
from cluster.training.failures import CheckpointWriteError, LearnerDiedError, first_line

# A surviving rank's collective fails as its peer dies, and Ray may mark the dead actor only after that failure.
DEATH_GRACE_S = 5.0


def sync_method(job: JobConfig) -> WeightSyncMethod:
    return choose_method(job.run.weight_sync, job.learner.device.value == "cuda")


def anchor_follows(job: JobConfig, actor_roles: Sequence[Role]) -> bool:
    """The anchor actors follow the policy push with their own EMA (actors/weight_ema.py) on the object store.
    Not with LoRA: there the anchor push is adapter-sized already (the EMA of the adapters). Only for an anchor
    that moves by the EMA every step (not iterated BOND's periodic copy)."""
    return (
        job.run.anchor_ema_on_actors
        and sync_method(job) is WeightSyncMethod.OBJECT_STORE
        and job.models.sampler_backend is SamplerBackend.VLLM
        and job.learner.lora is None
        and Role.ANCHOR in actor_roles
        and not job.algorithm.anchor_copy_every
    )


class RayLearnerGroup:
    def __init__(self, job: JobConfig, ranks: list, fleet: Fleet, sleeps: bool):
        """sleeps: the engines give their memory to the learner while it steps (colocated, or engine sleep mode)."""
        self.job, self.ranks, self.fleet = job, ranks, fleet
        self.method = sync_method(job)
        self.anchor_follows = anchor_follows(job, tuple(fleet.actors))
        self._group_backend = "nccl" if job.learner.device.value == "cuda" else "gloo"
        self._sleeps, self._sleep_reported = sleeps, False
        self._last_checkpoint: Path | None = None
        if self.method is WeightSyncMethod.COLLECTIVE:
            for role in fleet.actors:
                if role is not Role.REFERENCE:  # frozen: never pushed to
                    self._open_group(role)

    def learn(self, batch: Batch) -> StepStats:
        ref = ray.put(batch)  # one put, every rank reads it and takes its share
        if self._sleeps:  # give the engines' memory to the learner while it trains
            released = self.fleet.sleep()
            if not self._sleep_reported:
                self._sleep_reported = True
                print(
                    f"{len(self.fleet.all())} engines sleep while the learner steps: {released / 2**20:.0f} MiB "
                    "freed at the first sleep",
                    flush=True,
                )
        try:
            return self._on_learner([rank.step.remote(ref) for rank in self.ranks])[0]
        finally:
            if self._sleeps:  # awake before the weight push that follows
                self.fleet.wake_up()

    def kl_to_reference(self, completions: Sequence[Completion], role: Role = Role.POLICY) -> KlEstimates:
        """KL(pi_role || pi_ref) estimates per completion (bond.divergence), from the learner (every rank computes)."""
        ref = ray.put(list(completions))
        return self._on_learner([rank.kl_to_reference.remote(ref, role) for rank in self.ranks])[0]

    def sync(self, role: Role) -> SyncReport:
        """Push `role`'s weights to all its actors; an actor that dies meanwhile is restarted and the push redone.

        When the anchor actors follow the policy push (run.anchor_ema_on_actors), the policy push reaches them
        too and the anchor's sync only pushes the learner's anchor to an actor that did not follow (a restarted
        one, the start of a resumed job)."""
        while True:
            try:
                if role is Role.ANCHOR and self.anchor_follows:
                    return self._sync_lagging_anchors()
                return self.push(role, range(len(self.fleet.actors[role])))
            except RayActorError as e:
                roles = (role, Role.ANCHOR) if role is Role.POLICY and self.anchor_follows else (role,)
                lost = next(((r, i) for r in roles if (i := self.fleet.lost(r, e)) is not None), None)
                if lost is None:
                    raise
                self.fleet.recover(*lost, first_line(e))

    def push(self, role: Role, indices) -> SyncReport:
        """Push to actors `indices` of `role`. Collective transport: a restarted actor lost its group membership
        with its process, so the role's group is formed anew and every actor of the role receives the push."""
        indices, actors, held = list(indices), self.fleet.actors, self.fleet.held
        try:
            if self.method is WeightSyncMethod.COLLECTIVE:
                if len(indices) < len(actors[role]):
                    self._open_group(role)
                    indices = list(range(len(actors[role])))
                report = push_weights_collective(self.ranks, actors[role], role, self.job.run.weight_sync_timeout_s)
            else:
                followers = self._followers(role, indices)
                targets = [actors[role][i] for i in indices] + [actors[Role.ANCHOR][j] for j in followers]
                report = push_weights(self.ranks, targets, role)
                for j in followers:
                    held[Role.ANCHOR][j] = report.version
        except (RayError, WeightSyncError) as e:
            if (death := self._learner_death(e)) is not None:
                raise death from None
            raise
        for i in indices:
            held[role][i] = report.version
        return report

    def _sync_lagging_anchors(self) -> SyncReport:
        t0 = time.perf_counter()
        version = ray.get(self.ranks[0].version.remote(Role.ANCHOR))
        lagging = [i for i, held in enumerate(self.fleet.held[Role.ANCHOR]) if held != version]
        if lagging:
            return self.push(Role.ANCHOR, lagging)
        return SyncReport(role=Role.ANCHOR, version=version, buckets=0, num_bytes=0, seconds=time.perf_counter() - t0)

    def _followers(self, role: Role, indices: list[int]) -> list[int]:
        """Anchor actors that take this policy push and apply the EMA: those one version behind (or, on a retried
        push, already at it); a lagging one gets the learner's anchor instead (_sync_lagging_anchors)."""
        if role is not Role.POLICY or not self.anchor_follows or len(indices) < len(self.fleet.actors[role]):
            return []
        version = ray.get(self.ranks[0].version.remote(Role.POLICY))
        return [j for j, held in enumerate(self.fleet.held[Role.ANCHOR]) if held in (version - 1, version)]

    def _open_group(self, role: Role) -> None:
        open_weight_group(
            self.ranks, self.fleet.actors[role], role, self._group_backend, self.job.run.weight_sync_timeout_s
        )

    def _learner_death(self, error: Exception) -> LearnerDiedError | None:
        """The learner death behind a failure, if any: the rank the error names, or, where it names no actor (a
        surviving rank failing first in a collective with the dead one: gloo's 'Connection reset by peer'), a rank
        Ray's state API reports not alive within DEATH_GRACE_S."""
        ids = [r._actor_id.hex() for r in self.ranks]
        named = getattr(error, "actor_id", None) or getattr(error.__cause__, "actor_id", None)  # a RayActorError
        if named:
            return (
                LearnerDiedError(ids.index(named), first_line(error), self._last_checkpoint) if named in ids else None
            )
        deadline = time.monotonic() + DEATH_GRACE_S
        while True:
            states = [getattr(actor_state(actor_id), "state", None) for actor_id in ids]
            dead = [r for r, state in enumerate(states) if state != "ALIVE"]
            if dead:
                return LearnerDiedError(dead[0], f"Ray reports its actor {states[dead[0]]}", self._last_checkpoint)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)

    def _on_learner(self, refs: list) -> list:
        """The ranks' results. A rank that dies stops the job at once: the others may be blocked in a collective
        that never completes, so waiting on all of them would hang."""
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except RayActorError as e:
                raise LearnerDiedError(refs.index(done[0]), first_line(e), self._last_checkpoint) from None
            except RayError as e:
                if (death := self._learner_death(e)) is not None:
                    raise death from None
                raise
        return ray.get(refs)

    def save(self, directory: Path, extra: dict, sha256: bool = True) -> None:
        try:
            self._on_learner([rank.save.remote(str(directory), extra, sha256) for rank in self.ranks])
        except OSError as e:  # a full disk, a lost mount: the previous checkpoint is still the newest complete one
            raise CheckpointWriteError(
                f"checkpoint {directory} not written ({first_line(getattr(e, 'cause', e))}); "
                f"newest complete checkpoint: {self._last_checkpoint or 'none'}"
            ) from None
        self._last_checkpoint = Path(directory)

    def restore(self, directory: Path) -> dict:
        extra = self._on_learner([rank.restore.remote(str(directory)) for rank in self.ranks])[0]
        self._last_checkpoint = Path(directory)
        return extra

    def export_hf(self, directory: Path) -> None:
        self._on_learner([rank.export_hf.remote(str(directory)) for rank in self.ranks])

    def close(self) -> None:
        for r in self.ranks:
            ray.kill(r)
