"""Placing and wiring the boxes on Ray: actors (policy, anchor, reference), the reward service, the learner ranks.

The same code runs on one laptop and on a cluster: placement groups reserve each role's bundles, and
every component is the plain class from actors/, learner/ or reward_service/ run as a Ray actor (or a
Serve deployment). The algorithm never sees Ray; this file is where Ray lives.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from ray.util.state import get_actor

from actors.lora_adapter import AdapterSpec
from actors.sampling import SamplingSettings
from actors.weight_broadcast import GroupAddress, WeightGroup
from actors.weight_flat import FlatUpdate
from bond.divergence import KlEstimates
from bond.records import Batch, Completion, Prompt, Role, ScoredCompletion, StepStats
from bond.sampling_plan import SamplingPlan
from cluster.config.job import JobConfig, SamplerBackend
from cluster.core import Samples, SyncReport
from cluster.runtime import placement
from cluster.runtime.ports import free_port
from cluster.runtime.threads import job_threads, thread_env
from cluster.runtime.weight_sync import (
    WeightSyncMethod,
    choose_method,
    open_weight_group,
    push_weights,
    push_weights_collective,
)
from cluster.training.failures import ActorLostError, CheckpointWriteError, LearnerDiedError, first_line
from cluster.training.seeds import actor_seed, role_settings
from reward_service import serve_app

# Serve kills its HTTP proxy after 3 readiness checks of 5 s; on a busy 2-core machine (vLLM engines and the
# learner starting beside it) the proxy can need longer, and serve.start then fails with ActorDiedError.
# Ray processes inherit this from the process that starts them (init_ray below, or a user's `ray start`).
SERVE_PROXY_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}

# A quiet console (run.verbose=false): Serve's log lines (with its per-request access log) go to its log
# files only, not also to each worker's stderr.
QUIET_ENV = {"RAY_SERVE_LOG_TO_STDERR": "0"}

SAMPLER_ENV = {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING"}
# vLLM on CPU only: engine in the actor's process, 1 GiB KV cache, no core binding (../shared/STACK.md).
# A GPU actor must not get these (in-process engine and CPU KV sizing are CPU-backend settings).
CPU_SAMPLER_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}


def sampler_env(gpus_per_actor: float) -> dict[str, str]:
    return SAMPLER_ENV if gpus_per_actor > 0 else {**SAMPLER_ENV, **CPU_SAMPLER_ENV}


# A restarted sampler re-imports vLLM and starts its engine: seconds on a GPU node, up to a minute on a busy CPU.
ACTOR_RESTART_TIMEOUT_S = 180.0
# Time a scoring request may wait for Serve to start a replacement replica, on top of reward.request_timeout_s.
REPLICA_START_ALLOWANCE_S = 120.0


class LearnerRank:
    """One data-parallel learner rank as a Ray actor: the learner/ class plus what the driver needs remotely."""

    def __init__(
        self,
        job: JobConfig,
        reference: str,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        threads: int | None = None,
    ):
        import torch

        from learner.learner import Learner

        if threads is not None:  # Ray's default for a fractional num_cpus is one thread (cluster/runtime/threads.py)
            torch.set_num_threads(threads)
        self.rank = rank
        self.learner = Learner(
            reference,
            job.algorithm,
            job.learner,
            rank=rank,
            world_size=world_size,
            master_addr=master_addr,
            master_port=master_port,
        )
        self._export_bytes = 0
        self._weight_groups: dict[Role, WeightGroup] = {}  # rank 0 only: the sender of each role's group

    def step(self, batch: Batch) -> StepStats:
        return self.learner.step(batch)

    def weights(self, role: Role) -> Iterator[FlatUpdate]:
        """Every rank walks the buckets (gathers are collective); only rank 0 yields them into the object store,
        each as one flat buffer that every reader maps without a copy (actors/weight_flat.py)."""
        self._export_bytes = 0
        for update in self.learner.weights(role):
            self._export_bytes += update.num_bytes
            if self.rank == 0:
                yield FlatUpdate.pack(update)

    def last_export_bytes(self) -> int:
        return self._export_bytes

    def model_bytes(self) -> int:
        return self.learner.model_bytes

    @staticmethod
    def threads() -> int:
        """torch intra-op threads of this rank (what resources.threads gave it)."""
        import torch

        return torch.get_num_threads()

    @staticmethod
    def weight_group_port() -> tuple[str, int]:
        return node_port()

    def join_weight_group(self, role: Role, address: GroupAddress) -> None:
        """Rank 0 hosts `role`'s weight group (its TCPStore) as group rank 0; blocks until every actor joined."""
        self._weight_groups[role] = WeightGroup(address, 0, self.learner.device)

    def send_weights(self, role: Role) -> tuple[int, int]:
        """Every rank walks the buckets (gathers are collective); rank 0 broadcasts them. Returns (buckets, bytes)."""
        group = self._weight_groups.get(role) if self.rank == 0 else None
        if self.rank == 0 and group is None:
            raise RuntimeError(f"send_weights({role}) before join_weight_group")
        buckets = num_bytes = 0
        for update in self.learner.weights(role):
            if group is not None:
                group.send(update)
            buckets, num_bytes = buckets + 1, num_bytes + update.num_bytes
        return buckets, num_bytes

    def version(self, role: Role) -> int:
        return self.learner.policy_version if role is Role.POLICY else self.learner.anchor_version

    def kl_to_reference(self, completions: list[Completion]) -> KlEstimates:
        """Every rank computes them (a collective under ZeRO-3); the driver keeps rank 0's."""
        return self.learner.kl_to_reference(completions)

    def save(self, directory: str, extra: dict, sha256: bool = True) -> None:
        self.learner.save(directory, extra=extra, sha256=sha256)

    def restore(self, directory: str) -> dict:
        return self.learner.restore(directory)

    def export_hf(self, directory: str) -> None:
        self.learner.export_hf(directory)


def node_port() -> tuple[str, int]:
    """This node's address and a port free on every interface (one the other nodes connect to)."""
    return ray.util.get_node_ip_address(), free_port("")


@dataclass(frozen=True)
class Share:
    """One actor's part of a sampling request, kept until its samples arrive so a dead actor's part can be redrawn."""

    role: Role
    actor: int  # index in System.actors[role]
    prompts: tuple[tuple[int, Prompt], ...]  # (prompt_id, text)
    n: int
    settings: SamplingSettings
    version: int  # weights version the actor had confirmed when the share was sent
    incarnation: int  # restarts of the actor seen when the share was sent
    ref: ray.ObjectRef


class EarlyScoring:
    """Streaming: each share's samples go to the reward service as soon as its actor answers, from a background
    thread, so scoring overlaps the other actors' sampling (sync mode) or the learner's step (pipelined mode)
    instead of waiting for every actor. Only the happy path is handled here: a share whose actor failed, or
    answered with weights older than it had confirmed, is left to finish_sampling's _collect (recover, redraw),
    and its redrawn samples are scored by score() afterwards. `results` is read only after join()."""

    def __init__(self, shares: tuple[Share, ...], submit):
        self.results: dict[int, tuple[list[Completion], list]] = {}  # share index -> (samples, scoring requests)
        self._thread = threading.Thread(
            target=self._run, args=(shares, submit), daemon=True, name="jbond-early-scoring"
        )
        self._thread.start()

    def _run(self, shares: tuple[Share, ...], submit) -> None:
        index = {share.ref: i for i, share in enumerate(shares)}
        waiting = list(index)
        while waiting:
            try:
                ready, waiting = ray.wait(waiting, num_returns=1)
            except Exception:  # noqa: BLE001 - Ray shutting down under a failed job: _collect sees the real error
                return
            i = index[ready[0]]
            try:
                completions = ray.get(ready[0])
            except Exception:  # noqa: BLE001 - the actor died: _collect recovers it and redraws the share
                continue
            if min((c.weights_version for c in completions), default=shares[i].version) < shares[i].version:
                continue  # restarted unseen (base weights): _collect redraws
            try:
                requests = submit(completions)
            except Exception:  # noqa: BLE001 - the reward service is down: score() requests them again (retried)
                requests = []
            self.results[i] = (completions, requests)

    def join(self) -> None:
        self._thread.join()


@dataclass(frozen=True)
class PendingSamples:
    shares: tuple[Share, ...]
    early: EarlyScoring | None = None  # scoring as each share arrives (None: score() does it all)


class System:
    """Handles to every component of a running job."""

    def __init__(self, job: JobConfig, metrics=None, roles: Sequence[Role] | None = None):
        """roles: whose sampling workers to start (default job.actor_roles, what the algorithm samples); add
        Role.REFERENCE to evaluate Best-of-N of the reference (evaluation.bon_curve) in a job that trains without."""
        self.job = job
        res = job.resources
        self._groups = []
        sampler_cls = sampler_class(job.models.sampler_backend)
        engine_kwargs = sampler_kwargs(job)
        on_gpu = job.learner.device.value == "cuda"
        self._group_backend = "nccl" if on_gpu else "gloo"
        self.weight_sync = choose_method(job.run.weight_sync, on_gpu)
        # The anchor actors follow the policy push with their own EMA (actors/weight_ema.py) on the object store.
        # Not with LoRA: there the anchor push is adapter-sized already (the EMA of the adapters).
        # Only for an anchor that moves by the EMA every step (not iterated BOND's periodic copy).
        actor_roles = tuple(dict.fromkeys(roles or job.actor_roles))
        self._anchor_follows = (
            job.run.anchor_ema_on_actors
            and self.weight_sync is WeightSyncMethod.OBJECT_STORE
            and job.models.sampler_backend is SamplerBackend.VLLM
            and job.learner.lora is None
            and Role.ANCHOR in actor_roles
            and not job.algorithm.anchor_copy_every
        )
        role_kwargs = {Role.ANCHOR: {"anchor_ema": job.algorithm.eta}} if self._anchor_follows else {}
        threads = job_threads(job)
        # actor_gpus: a tensor-parallel engine's shards, one GPU each
        layout = placement.plan(res, job.actor_gpus, actor_roles)
        groups = {name: self._placement(group, name) for name, group in layout.groups.items()}

        def where(slot: placement.Slot, env: dict[str, str]) -> dict:
            # a colocated CPU slot's share of the bundle's cores overrides resources.threads' count
            env = {**env, **(thread_env(slot.omp_threads) if slot.omp_threads else {})}
            return dict(
                num_cpus=slot.num_cpus,
                num_gpus=slot.num_gpus,
                **({"runtime_env": {"env_vars": env}} if env else {}),
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    groups[slot.group], placement_group_bundle_index=slot.bundle
                ),
            )

        tag = uuid.uuid4().hex[:8]  # names like jbond-1a2b3c4d-policy-0: findable in the dashboard and state API
        self.actors: dict[Role, list] = {}
        for role, slots in layout.actors.items():
            self.actors[role] = [
                ray.remote(sampler_cls)
                .options(
                    **where(slot, {**sampler_env(job.actor_gpus), **thread_env(threads.actor)}),
                    # Ray restarts a dead actor (same bundle, same constructor: base weights, version 0); the
                    # driver re-syncs it and redraws its share (_collect). Its in-flight tasks fail, not retry.
                    max_restarts=res.max_actor_restarts,
                    max_task_retries=0,
                    name=f"jbond-{tag}-{role}-{i}",
                )
                .remote(
                    job.models.policy,
                    role,
                    seed=actor_seed(job.run.seed, role, i),
                    **engine_kwargs,
                    **role_kwargs.get(role, {}),
                )
                for i, slot in enumerate(slots)
            ]
        first = layout.learner[0]
        addr, port = ray.get(
            ray.remote(node_port)
            .options(
                num_cpus=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    groups[first.group], placement_group_bundle_index=first.bundle
                ),
            )
            .remote()
        )
        self.learner = [
            ray.remote(LearnerRank)
            .options(**where(slot, thread_env(threads.learner)), name=f"jbond-{tag}-learner-{r}")
            .remote(
                job, job.models.policy, r, res.learner_ranks, addr, port, threads=slot.omp_threads or threads.learner
            )
            for r, slot in enumerate(layout.learner)
        ]
        # Colocated: the engines give their memory back while the learner steps (learn()).
        self._sleeps = job.engine.enable_sleep_mode or (
            res.colocate and job.models.sampler_backend is SamplerBackend.VLLM
        )
        self._sleep_reported = False
        self.reward = serve_app.deploy(job.reward, env_vars=thread_env(threads.reward))
        ray.get(
            [a.__ray_ready__.remote() for group in self.actors.values() for a in group]
            + [r.__ray_ready__.remote() for r in self.learner]
        )
        if res.colocate and self._sleeps and res.gpus_per_actor == 0:
            # vLLM zero-fills the whole CPU KV cache at start, so all of it is resident; colocated engines give
            # it back at once and from then on hold only what a sampling round touches.
            released = sum(ray.get([a.sleep.remote() for group in self.actors.values() for a in group]))
            ray.get([a.wake_up.remote() for group in self.actors.values() for a in group])
            print(f"colocated: engines released {released / 2**20:.0f} MiB of KV cache at start", flush=True)
        self._metrics = metrics
        self._held = {role: [0] * len(group) for role, group in self.actors.items()}  # confirmed weights versions
        self._early_scores: list[tuple[list, object]] = []  # replies to EarlyScoring's requests, for score()
        self._restarts = {role: [0] * len(group) for role, group in self.actors.items()}
        self._last_checkpoint: Path | None = None
        if self.weight_sync is WeightSyncMethod.COLLECTIVE:
            for role in self.actors:
                if role is not Role.REFERENCE:  # frozen: never pushed to
                    self._open_group(role)

    def _placement(self, group: placement.Group, name: str):
        bundles = [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.01} for b in group.bundles]
        selector = {"bundle_label_selector": [group.labels] * len(bundles)} if group.labels else {}
        if group.labels and not any(_has_labels(node, group.labels) for node in ray.nodes() if node["Alive"]):
            field = "learner_node_labels" if name in (placement.LEARNER, placement.SHARED) else "actor_node_labels"
            print(
                f"warning: no live Ray node has the labels {group.labels} (resources.{field}); the {name} "
                "processes wait until one joins (`ray start --labels ...`)",
                flush=True,
            )
        pg = placement_group(bundles, strategy="PACK", **selector)
        ray.get(pg.ready())
        self._groups.append(pg)
        return pg

    # --- the verbs the loop uses -------------------------------------------------------------------------

    def start_sampling(
        self, prompts: Sequence[tuple[int, Prompt]], plan: SamplingPlan, settings: SamplingSettings
    ) -> PendingSamples:
        """Ask each sampled role's actors for the plan's samples per prompt (in flight); each actor's samples are
        sent on to the reward service as soon as they arrive (EarlyScoring)."""
        shares = tuple(share for role, n in plan.draws for share in self._fan_out(role, prompts, n, settings))
        return PendingSamples(shares, EarlyScoring(shares, self._request_scores))

    def _fan_out(
        self, role: Role, prompts: Sequence[tuple[int, Prompt]], n: int, settings: SamplingSettings
    ) -> tuple[Share, ...]:
        if role not in self.actors:
            raise ValueError(f"no {role} actors in this system (started: {sorted(r.value for r in self.actors)})")
        count, settings = len(self.actors[role]), role_settings(settings, role)
        shares = [tuple(prompts[i::count]) for i in range(count)]
        return tuple(self._send(role, i, share, n, settings) for i, share in enumerate(shares) if share)

    def _send(
        self, role: Role, i: int, prompts: tuple[tuple[int, Prompt], ...], n: int, settings: SamplingSettings
    ) -> Share:
        ref = self.actors[role][i].generate.remote(
            [p for _, p in prompts], n, settings, prompt_ids=[pid for pid, _ in prompts]
        )
        return Share(role, i, prompts, n, settings, self._held[role][i], self._restarts[role][i], ref)

    def finish_sampling(self, pending: PendingSamples) -> Samples:
        parts: dict[Role, list[Completion]] = {}
        early = {}
        if pending.early is not None:
            pending.early.join()
            early = pending.early.results
        self._early_scores = []  # only the latest samples' requests: score() matches them by identity
        for i, share in enumerate(pending.shares):
            if i in early:
                completions, requests = early[i]
                self._early_scores += requests
            else:
                completions = self._collect(share)
            parts.setdefault(share.role, []).extend(completions)
        return Samples(by_role=parts)

    def _collect(self, share: Share) -> list[Completion]:
        """The share's samples; if its actor died (its ref fails) or restarted unseen (it answers with an older
        version than it had confirmed: the base weights), bring the actor back to the current weights and redraw."""
        while True:
            try:
                completions = ray.get(share.ref)
                oldest = min((c.weights_version for c in completions), default=share.version)
                if oldest >= share.version:
                    return completions
                cause = f"it answered with weights version {oldest} after confirming {share.version}"
            except RayActorError as e:
                cause = first_line(e)
            if self._restarts[share.role][share.actor] == share.incarnation:  # not yet recovered by sync()
                self._recover(share.role, share.actor, cause, redrawn=len(share.prompts))
            share = self._send(share.role, share.actor, share.prompts, share.n, share.settings)

    def _recover(self, role: Role, i: int, cause: str, redrawn: int = 0, push: bool = True) -> None:
        """Wait for Ray to restart actor i of `role`, count it, and (push) sync it to the learner's weights."""
        t0, limit = time.perf_counter(), self.job.resources.max_actor_restarts
        self._restarts[role][i] += 1
        count = self._restarts[role][i]
        if count > limit:
            raise ActorLostError(
                f"{role} actor {i} died again after {limit} restarts (resources.max_actor_restarts={limit}): {cause}"
            )
        _wait_until_alive(self.actors[role][i], f"{role} actor {i}", cause)
        self._held[role][i] = 0  # Ray restarts it with the base weights: an anchor actor must not follow a push now
        if self._metrics:
            self._metrics.record_actor_restart(role.value)
        push = push and role is not Role.REFERENCE  # a restarted reference actor holds pi_ref already
        version = self._sync_actors(role, [i]).version if push else None
        synced = f"synced to weights version {version}, " if push else ""
        print(
            f"{role} actor {i} restarted ({count}/{limit}) after: {cause}; {synced}"
            f"{redrawn} prompts redrawn; {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

    def _request_scores(self, completions: Sequence[Completion], chunk: int = 16) -> list[tuple[list, object]]:
        """Send scoring requests in concurrent chunks (so Serve's batcher and replicas share the load); returns
        (chunk, pending reply) pairs."""
        chunks = [list(completions[i : i + chunk]) for i in range(0, len(completions), chunk)]
        return [(part, self.reward.score.remote(reward_prompts(part), [c.text for c in part])) for part in chunks]

    def score(self, completions: Sequence[Completion]) -> list[ScoredCompletion]:
        """Score through the reward service. Samples of the latest finish_sampling were already sent as their actor
        answered (EarlyScoring): their replies are collected; anything else (a redrawn share, evaluation samples,
        a retry after a failed reply) is requested now."""
        early, self._early_scores = self._early_scores, []  # a retry after a failure always asks afresh
        wanted = {id(c) for c in completions}  # the requests hold their completions, so ids stay unique
        requests = [(part, reply) for part, reply in early if any(id(c) in wanted for c in part)]
        sent = {id(c) for part, _ in requests for c in part}
        requests += self._request_scores([c for c in completions if id(c) not in sent])
        scored: dict[int, ScoredCompletion] = {}
        for part, reply in requests:
            # bounded: a request waiting for Serve to replace a dead replica must not wait forever
            result = reply.result(timeout_s=self.job.reward.request_timeout_s + REPLICA_START_ALLOWANCE_S)
            scored.update(
                (id(c), ScoredCompletion(c, reward=r, reward_model_id=result.reward_model_id))
                for c, r in zip(part, result.rewards, strict=True)
            )
        return [scored[id(c)] for c in completions]

    def sample(self, role: Role, prompts: Sequence[Prompt], n: int, settings: SamplingSettings) -> list[Completion]:
        """n completions per prompt from the role's actors, in prompt order (evaluation, shown samples); an actor
        that dies meanwhile is recovered and its share redrawn, as in training."""
        shares = self._fan_out(role, tuple(enumerate(prompts)), n, settings)
        parts = [c for share in shares for c in self._collect(share)]
        return sorted(parts, key=lambda c: c.prompt_id)  # stable: a prompt's n samples stay in order

    def kl_to_reference(self, completions: Sequence[Completion]) -> KlEstimates:
        """KL(pi || pi_ref) estimates per completion (bond.divergence), from the learner (every rank computes)."""
        ref = ray.put(list(completions))
        return self._on_learner([rank.kl_to_reference.remote(ref) for rank in self.learner])[0]

    def learn(self, batch: Batch) -> StepStats:
        ref = ray.put(batch)  # one put, every rank reads it and takes its share
        actors = [a for group in self.actors.values() for a in group]
        if self._sleeps:  # give the engines' memory to the learner while it trains
            released = sum(ray.get([a.sleep.remote() for a in actors]))
            if not self._sleep_reported:
                self._sleep_reported = True
                print(
                    f"{len(actors)} engines sleep while the learner steps: {released / 2**20:.0f} MiB freed "
                    "at the first sleep",
                    flush=True,
                )
        try:
            return self._on_learner([rank.step.remote(ref) for rank in self.learner])[0]
        finally:
            if self._sleeps:  # awake before the weight push that follows
                ray.get([a.wake_up.remote() for a in actors])

    def sync(self, role: Role) -> SyncReport:
        """Push `role`'s weights to all its actors; an actor that dies meanwhile is restarted and the push redone.

        When the anchor actors follow the policy push (run.anchor_ema_on_actors), the policy push reaches them
        too and the anchor's sync only pushes the learner's anchor to an actor that did not follow (a restarted
        one, the start of a resumed job)."""
        while True:
            try:
                if role is Role.ANCHOR and self._anchor_follows:
                    return self._sync_lagging_anchors()
                return self._sync_actors(role, range(len(self.actors[role])))
            except RayActorError as e:
                roles = (role, Role.ANCHOR) if role is Role.POLICY and self._anchor_follows else (role,)
                lost = next(((r, i) for r in roles if (i := self._index(r, e)) is not None), None)
                if lost is None:
                    raise
                self._recover(*lost, first_line(e), push=False)

    def _sync_lagging_anchors(self) -> SyncReport:
        t0 = time.perf_counter()
        version = ray.get(self.learner[0].version.remote(Role.ANCHOR))
        lagging = [i for i, held in enumerate(self._held[Role.ANCHOR]) if held != version]
        if lagging:
            return self._sync_actors(Role.ANCHOR, lagging)
        return SyncReport(role=Role.ANCHOR, version=version, buckets=0, num_bytes=0, seconds=time.perf_counter() - t0)

    def _followers(self, role: Role, indices: list[int]) -> list[int]:
        """Anchor actors that take this policy push and apply the EMA: those one version behind (or, on a retried
        push, already at it); a lagging one gets the learner's anchor instead (_sync_lagging_anchors)."""
        if role is not Role.POLICY or not self._anchor_follows or len(indices) < len(self.actors[role]):
            return []
        version = ray.get(self.learner[0].version.remote(Role.POLICY))
        return [j for j, held in enumerate(self._held[Role.ANCHOR]) if held in (version - 1, version)]

    def _open_group(self, role: Role) -> None:
        open_weight_group(
            self.learner, self.actors[role], role, self._group_backend, self.job.run.weight_sync_timeout_s
        )

    def _sync_actors(self, role: Role, indices) -> SyncReport:
        """Push to actors `indices` of `role`. Collective transport: a restarted actor lost its group membership
        with its process, so the role's group is formed anew and every actor of the role receives the push."""
        indices = list(indices)
        try:
            if self.weight_sync is WeightSyncMethod.COLLECTIVE:
                if len(indices) < len(self.actors[role]):
                    self._open_group(role)
                    indices = list(range(len(self.actors[role])))
                report = push_weights_collective(
                    self.learner, self.actors[role], role, self.job.run.weight_sync_timeout_s
                )
            else:
                followers = self._followers(role, indices)
                report = push_weights(
                    self.learner,
                    [self.actors[role][i] for i in indices] + [self.actors[Role.ANCHOR][j] for j in followers],
                    role,
                )
                for j in followers:
                    self._held[Role.ANCHOR][j] = report.version
        except RayActorError as e:
            self._raise_if_learner(e)
            raise
        for i in indices:
            self._held[role][i] = report.version
        return report

    def _index(self, role: Role, error: RayActorError) -> int | None:
        """Which actor of `role` the error is about (None: another actor). Without an actor id in the error,
        ask the GCS which one is not alive or has restarted more often than we have seen."""
        ids = [a._actor_id.hex() for a in self.actors[role]]
        if error.actor_id in ids:
            return ids.index(error.actor_id)
        for i, actor_id in enumerate(ids):
            info = get_actor(actor_id)
            if info is None or info.state != "ALIVE" or (info.num_restarts or 0) > self._restarts[role][i]:
                return i
        return None

    def _raise_if_learner(self, error: RayActorError) -> None:
        ids = [r._actor_id.hex() for r in self.learner]
        dead = (
            [ids.index(error.actor_id)]
            if error.actor_id in ids
            else []
            if error.actor_id
            else [r for r, actor_id in enumerate(ids) if getattr(get_actor(actor_id), "state", None) != "ALIVE"]
        )
        if dead:
            raise LearnerDiedError(dead[0], first_line(error), self._last_checkpoint) from None

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
        return ray.get(refs)

    def save(self, directory: Path, extra: dict, sha256: bool = True) -> None:
        try:
            self._on_learner([rank.save.remote(str(directory), extra, sha256) for rank in self.learner])
        except OSError as e:  # a full disk, a lost mount: the previous checkpoint is still the newest complete one
            raise CheckpointWriteError(
                f"checkpoint {directory} not written ({first_line(getattr(e, 'cause', e))}); "
                f"newest complete checkpoint: {self._last_checkpoint or 'none'}"
            ) from None
        self._last_checkpoint = Path(directory)

    def restore(self, directory: Path) -> dict:
        extra = self._on_learner([rank.restore.remote(str(directory)) for rank in self.learner])[0]
        self._last_checkpoint = Path(directory)
        return extra

    def export_hf(self, directory: Path) -> None:
        self._on_learner([rank.export_hf.remote(str(directory)) for rank in self.learner])

    def shutdown(self) -> None:
        serve_app.shutdown()
        for group in self.actors.values():
            for a in group:
                ray.kill(a)
        for r in self.learner:
            ray.kill(r)
        for pg in self._groups:
            remove_placement_group(pg)


def _wait_until_alive(actor, name: str, cause: str) -> None:
    """Block until Ray has restarted `actor`. Calls fail while it restarts (at-most-once tasks), so poll; an
    actor Ray gave up on (restarts used up, its constructor failing) is an ActorLostError."""
    deadline = time.monotonic() + ACTOR_RESTART_TIMEOUT_S
    while True:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except (RayActorError, GetTimeoutError) as e:
            state = getattr(get_actor(actor._actor_id.hex()), "state", None)  # GCS view: RESTARTING / DEAD
            if state == "DEAD" or time.monotonic() > deadline:
                raise ActorLostError(
                    f"{name} died ({cause}) and did not come back within "
                    f"{ACTOR_RESTART_TIMEOUT_S:.0f} s: {first_line(e)}"
                ) from None
            time.sleep(0.5)


def _has_labels(node: dict, labels: dict[str, str]) -> bool:
    return all(node.get("Labels", {}).get(k) == v for k, v in labels.items())


def reward_prompts(completions: Sequence[Completion]) -> list[Prompt]:
    """What the reward service reads as each completion's prompt: the prompt row (messages, extras), not the
    policy's rendering of it; the reward model applies its own tokenizer and template."""
    return [c.source or Prompt(text=c.prompt) for c in completions]


def sampler_kwargs(job: JobConfig) -> dict:
    """The engine knobs the chosen sampler class takes (the hf backend has no vLLM-only ones)."""
    if job.models.sampler_backend is SamplerBackend.VLLM:
        lora = job.learner.lora  # the actors serve base + pushed adapters (actors/lora_adapter.py)
        adapter = AdapterSpec(lora.r, lora.alpha, lora.target_modules) if lora is not None else None
        return {**job.engine.vllm_kwargs(), "lora": adapter}
    return {**job.engine.hf_kwargs(), "device": "cuda" if job.resources.gpus_per_actor > 0 else "cpu"}


def sampler_class(backend: SamplerBackend):
    if backend is SamplerBackend.VLLM:
        from actors.vllm_sampler import VllmSampler

        return VllmSampler
    from actors.hf_sampler import HfSampler

    return HfSampler


def init_ray(job: JobConfig) -> Path | None:
    """Join the cluster of `ray job submit` / RAY_ADDRESS / run.ray_address, or start a local one.

    Unless run.verbose, the workers' output (vLLM, Serve, DeepSpeed) is not streamed to this console: it
    stays in Ray's log files. Returns the local session's log directory (None when joining a cluster, whose
    logs live on its nodes: `ray logs`, or the dashboard).
    """
    level = logging.INFO if job.run.verbose else logging.WARNING
    quiet = {"log_to_driver": job.run.verbose, "logging_level": level}
    logging.getLogger("ray.serve").setLevel(level)  # the driver's own Serve lines ("Started Serve", "ready at")
    address = job.run.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, **quiet)
        return None
    for key, value in {**SERVE_PROXY_ENV, **({} if job.run.verbose else QUIET_ENV)}.items():
        os.environ.setdefault(key, value)
    res = job.resources
    actor_cpus = 0 if res.colocate else sum(map(res.actors, job.actor_roles)) * res.cpus_per_actor
    needed = (
        actor_cpus + res.learner_ranks * res.cpus_per_learner + job.reward.replicas * job.reward.cpus_per_replica + 1
    )
    kwargs = {"_metrics_export_port": job.run.metrics_export_port} if job.run.metrics_export_port else {}
    # Locally, logical CPUs may exceed the cores: a laptop debugging run oversubscribes rather than deadlocks.
    # The dashboard serves Ray's state API (ray.util.state), which tells the driver which actor died or restarted.
    context = ray.init(
        num_cpus=max(os.cpu_count() or 1, int(needed + 0.999)),
        include_dashboard=True,
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}},
        **quiet,
        **kwargs,
    )
    return Path(context.address_info["session_dir"]) / "logs"
