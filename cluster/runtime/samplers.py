"""The sampling actors on Ray (the SamplerPool role): each role's actors, a request fanned out over them, each
actor's samples sent on to the reward service as soon as they arrive, and the recovery of an actor that died.

Ray restarts a dead actor (same bundle, same constructor: base weights, version 0); its in-flight tasks fail,
not retry. The driver waits for the restart, syncs the actor to the learner's weights and redraws its share,
so the loop never sees the fault (up to resources.max_actor_restarts per actor).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util import state as ray_state

from actors.sampling import SamplingSettings
from bond.records import Completion, Prompt, Role
from bond.sampling_plan import SamplingPlan
from cluster.core import Samples
from cluster.runtime.scorer import RayScorer
from cluster.training.failures import ActorLostError, first_line
from cluster.training.seeds import role_settings

SAMPLER_ENV = {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING"}
# vLLM on CPU only: engine in the actor's process, 1 GiB KV cache, no core binding.
# A GPU actor must not get these (in-process engine and CPU KV sizing are CPU-backend settings).
CPU_SAMPLER_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}

# vLLM-CPU compiles sampler helpers with torch.compile (inductor, a C++ build; e.g. the rank count of the sampled
# tokens' log-probs, vllm/v1/sample/ops/logprobs.py) at an engine's first generate even with enforce_eager: 1.5 s of the
# first step per engine with a warm compile cache, more on a fresh machine, and no faster afterwards (27 M, 32 prompts x
# 3 x 32 tokens, 2026-12-06: 3.34-3.44 s a generate either way). With enforce_eager nothing else is compiled, so an
# eager engine on CPU runs them uncompiled.
EAGER_CPU_SAMPLER_ENV = {"TORCHDYNAMO_DISABLE": "1"}

# A restarted sampler re-imports vLLM and starts its engine: seconds on a GPU node, up to a minute on a busy CPU.
ACTOR_RESTART_TIMEOUT_S = 180.0


def actor_state(actor_id: str):
    """Ray's record of an actor (state, restarts), from the cluster this driver is connected to. The address is
    explicit: without it the state API auto-detects a cluster and fails where a machine runs more than one."""
    return ray_state.get_actor(actor_id, address=ray.get_runtime_context().gcs_address)


def sampler_env(gpus_per_actor: float, enforce_eager: bool) -> dict[str, str]:
    if gpus_per_actor > 0:
        return SAMPLER_ENV
    return {**SAMPLER_ENV, **CPU_SAMPLER_ENV, **(EAGER_CPU_SAMPLER_ENV if enforce_eager else {})}


class Fleet:
    """Every role's actor handles and what the driver knows of each: the weights version it confirmed and the
    restarts seen. The pool samples from it, the learner group pushes weights to it."""

    def __init__(self, actors: dict[Role, list], max_restarts: int, metrics=None):
        self.actors = actors
        self.held = {role: [0] * len(group) for role, group in actors.items()}  # confirmed weights versions
        self.restarts = {role: [0] * len(group) for role, group in actors.items()}
        self.max_restarts = max_restarts
        self._metrics = metrics

    def all(self) -> list:
        return [a for group in self.actors.values() for a in group]

    def lost(self, role: Role, error: RayActorError) -> int | None:
        """Which actor of `role` the error is about (None: another actor). Without an actor id in the error,
        ask Ray's state API which one is not alive or has restarted more often than we have seen."""
        ids = [a._actor_id.hex() for a in self.actors[role]]
        if error.actor_id in ids:
            return ids.index(error.actor_id)
        for i, actor_id in enumerate(ids):
            info = actor_state(actor_id)
            if info is None or info.state != "ALIVE" or (info.num_restarts or 0) > self.restarts[role][i]:
                return i
        return None

    def recover(self, role: Role, i: int, cause: str, redrawn: int = 0, resync=None) -> None:
        """Wait for Ray to restart actor i of `role`, count it, and sync it to the learner's weights through
        `resync` (the learner group; None: the caller pushes anyway)."""
        t0, limit = time.perf_counter(), self.max_restarts
        self.restarts[role][i] += 1
        count = self.restarts[role][i]
        if count > limit:
            raise ActorLostError(
                f"{role} actor {i} died again after {limit} restarts (resources.max_actor_restarts={limit}): {cause}"
            )
        _wait_until_alive(self.actors[role][i], f"{role} actor {i}", cause)
        self.held[role][i] = 0  # Ray restarts it with the base weights: an anchor actor must not follow a push now
        if self._metrics:
            self._metrics.record_actor_restart(role.value)
        push = resync is not None and role is not Role.REFERENCE  # a restarted reference actor holds pi_ref already
        version = resync.push(role, [i]).version if push else None
        synced = f"synced to weights version {version}, " if push else ""
        print(
            f"{role} actor {i} restarted ({count}/{limit}) after: {cause}; {synced}"
            f"{redrawn} prompts redrawn; {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

    def sleep(self) -> int:
        """Every engine gives its memory back; returns the bytes released."""
        return sum(ray.get([a.sleep.remote() for a in self.all()]))

    def wake_up(self) -> None:
        ray.get([a.wake_up.remote() for a in self.all()])

    def close(self) -> None:
        for a in self.all():
            ray.kill(a)


def _wait_until_alive(actor, name: str, cause: str) -> None:
    """Block until Ray has restarted `actor`. Calls fail while it restarts (at-most-once tasks), so poll; an
    actor Ray gave up on (restarts used up, its constructor failing) is an ActorLostError."""
    deadline = time.monotonic() + ACTOR_RESTART_TIMEOUT_S
    while True:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except (RayActorError, GetTimeoutError) as e:
            state = getattr(actor_state(actor._actor_id.hex()), "state", None)  # Ray's view: RESTARTING / DEAD
            if state == "DEAD" or time.monotonic() > deadline:
                raise ActorLostError(
                    f"{name} died ({cause}) and did not come back within "
                    f"{ACTOR_RESTART_TIMEOUT_S:.0f} s: {first_line(e)}"
                ) from None
            time.sleep(0.5)


@dataclass(frozen=True)
class Share:
    """One actor's part of a sampling request, kept until its samples arrive so a dead actor's part can be redrawn."""

    role: Role
    actor: int  # index in Fleet.actors[role]
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
    answered with weights older than it had confirmed, is left to RaySamplerPool.finish (recover, redraw), and
    its redrawn samples are scored by the scorer afterwards. `results` is read only after join()."""

    def __init__(self, shares: tuple[Share, ...], scorer: RayScorer):
        self.results: dict[int, tuple[list[Completion], list]] = {}  # share index -> (samples, scoring requests)
        self._thread = threading.Thread(
            target=self._run, args=(shares, scorer), daemon=True, name="jbond-early-scoring"
        )
        self._thread.start()

    def _run(self, shares: tuple[Share, ...], scorer: RayScorer) -> None:
        index = {share.ref: i for i, share in enumerate(shares)}
        waiting = list(index)
        while waiting:
            try:
                ready, waiting = ray.wait(waiting, num_returns=1)
            except Exception:  # noqa: BLE001 - Ray shutting down under a failed job: finish sees the real error
                return
            i = index[ready[0]]
            try:
                completions = ray.get(ready[0])
            except Exception:  # noqa: BLE001 - the actor died: finish recovers it and redraws the share
                continue
            if min((c.weights_version for c in completions), default=shares[i].version) < shares[i].version:
                continue  # restarted unseen (base weights): finish redraws
            try:
                requests = scorer.request(completions)
            except Exception:  # noqa: BLE001 - the reward service is down: score() requests them again (retried)
                requests = []
            self.results[i] = (completions, requests)

    def join(self) -> None:
        self._thread.join()


@dataclass(frozen=True)
class PendingSamples:
    shares: tuple[Share, ...]
    early: EarlyScoring  # scoring as each share arrives


class RaySamplerPool:
    """Requests fanned out over a role's actors, prompts dealt round-robin; `learner` (the learner group) brings
    a restarted actor back to the current weights before its share is redrawn."""

    def __init__(self, fleet: Fleet, learner, scorer: RayScorer):
        self.fleet, self._learner, self._scorer = fleet, learner, scorer

    def start(
        self, prompts: Sequence[tuple[int, Prompt]], plan: SamplingPlan, settings: SamplingSettings
    ) -> PendingSamples:
        """Ask each sampled role's actors for the plan's samples per prompt (in flight); each actor's samples are
        sent on to the reward service as soon as they arrive (EarlyScoring)."""
        shares = tuple(share for role, n in plan.draws for share in self._fan_out(role, prompts, n, settings))
        return PendingSamples(shares, EarlyScoring(shares, self._scorer))

    def finish(self, pending: PendingSamples) -> Samples:
        parts: dict[Role, list[Completion]] = {}
        pending.early.join()
        early = pending.early.results
        requests = []  # only the latest samples' requests: the scorer matches them by identity
        for i, share in enumerate(pending.shares):
            if i in early:
                completions, sent = early[i]
                requests += sent
            else:
                completions = self._collect(share)
            parts.setdefault(share.role, []).extend(completions)
        self._scorer.expect(requests)
        return Samples(by_role=parts)

    def sample(self, role: Role, prompts: Sequence[Prompt], n: int, settings: SamplingSettings) -> list[Completion]:
        """n completions per prompt from the role's actors, in prompt order (evaluation, shown samples); an actor
        that dies meanwhile is recovered and its share redrawn, as in training."""
        shares = self._fan_out(role, tuple(enumerate(prompts)), n, settings)
        parts = [c for share in shares for c in self._collect(share)]
        return sorted(parts, key=lambda c: c.prompt_id)  # stable: a prompt's n samples stay in order

    def close(self) -> None:
        self.fleet.close()

    def _fan_out(
        self, role: Role, prompts: Sequence[tuple[int, Prompt]], n: int, settings: SamplingSettings
    ) -> tuple[Share, ...]:
        actors = self.fleet.actors
        if role not in actors:
            raise ValueError(f"no {role} actors in this system (started: {sorted(r.value for r in actors)})")
        count, settings = len(actors[role]), role_settings(settings, role)
        shares = [tuple(prompts[i::count]) for i in range(count)]
        return tuple(self._send(role, i, share, n, settings) for i, share in enumerate(shares) if share)

    def _send(
        self, role: Role, i: int, prompts: tuple[tuple[int, Prompt], ...], n: int, settings: SamplingSettings
    ) -> Share:
        ref = self.fleet.actors[role][i].generate.remote(
            [p for _, p in prompts], n, settings, prompt_ids=[pid for pid, _ in prompts]
        )
        return Share(role, i, prompts, n, settings, self.fleet.held[role][i], self.fleet.restarts[role][i], ref)

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
            if self.fleet.restarts[share.role][share.actor] == share.incarnation:  # not yet recovered by sync()
                self.fleet.recover(share.role, share.actor, cause, redrawn=len(share.prompts), resync=self._learner)
            share = self._send(share.role, share.actor, share.prompts, share.n, share.settings)
