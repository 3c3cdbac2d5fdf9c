"""Placing and wiring the boxes on Ray: actors (policy, anchor), the reward service, the learner ranks.

The same code runs on one laptop and on a cluster: placement groups reserve each role's bundles, and
every component is the plain class from actors/, learner/ or reward_service/ run as a Ray actor (or a
Serve deployment). The algorithm never sees Ray; this file is where Ray lives.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.sampling import SamplingSettings
from actors.weight_broadcast import GroupAddress, WeightGroup
from bond.records import Batch, Completion, Role, ScoredCompletion, StepStats, WeightUpdate
from cluster.job_config import JobConfig, SamplerBackend
from cluster.weight_sync import (
    SyncReport,
    WeightSyncMethod,
    choose_method,
    open_weight_group,
    push_weights,
    push_weights_collective,
)
from reward_service import serve_app

# Serve kills its HTTP proxy after 3 readiness checks of 5 s; on a busy 2-core machine (vLLM engines and the
# learner starting beside it) the proxy can need longer, and serve.start then fails with ActorDiedError.
# Ray processes inherit this from the process that starts them (init_ray below, or a user's `ray start`).
SERVE_PROXY_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}

# vLLM on CPU: engine in the actor's process, 1 GiB KV cache, no core binding (../shared/STACK.md).
SAMPLER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
               "VLLM_CPU_OMP_THREADS_BIND": "nobind", "TOKENIZERS_PARALLELISM": "false",
               "VLLM_LOGGING_LEVEL": "WARNING"}


class LearnerRank:
    """One data-parallel learner rank as a Ray actor: the learner/ class plus what the driver needs remotely."""

    def __init__(self, job: JobConfig, reference: str, rank: int, world_size: int, master_addr: str,
                 master_port: int):
        from learner.learner import Learner

        self.rank = rank
        self.learner = Learner(reference, job.algorithm, job.learner, rank=rank, world_size=world_size,
                               master_addr=master_addr, master_port=master_port)
        self._export_bytes = 0
        self._weight_groups: dict[Role, WeightGroup] = {}  # rank 0 only: the sender of each role's group

    def step(self, batch: Batch) -> StepStats:
        return self.learner.step(batch)

    def weights(self, role: Role) -> Iterator[WeightUpdate]:
        """Every rank walks the buckets (gathers are collective); only rank 0 yields them into the object store."""
        self._export_bytes = 0
        for update in self.learner.weights(role):
            self._export_bytes += update.num_bytes
            if self.rank == 0:
                yield update

    def last_export_bytes(self) -> int:
        return self._export_bytes

    def model_bytes(self) -> int:
        return self.learner.model_bytes

    @staticmethod
    def weight_group_port() -> tuple[str, int]:
        return _free_port()

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

    def save(self, directory: str, extra: dict) -> None:
        self.learner.save(directory, extra=extra)

    def restore(self, directory: str) -> dict:
        return self.learner.restore(directory)

    def export_hf(self, directory: str) -> None:
        self.learner.export_hf(directory)


def _free_port() -> tuple[str, int]:
    with socket.socket() as s:
        s.bind(("", 0))
        return ray.util.get_node_ip_address(), s.getsockname()[1]


@dataclass(frozen=True)
class Samples:
    policy: list[Completion]  # [B] one per prompt
    anchor: list[Completion]  # [B * n] n per prompt, consecutive


def role_settings(settings: SamplingSettings, role: Role) -> SamplingSettings:
    """Policy and anchor must not share random streams (their weights are equal at step 0)."""
    if settings.seed is None:
        return settings
    return dataclasses.replace(settings, seed=2 * settings.seed + (role is Role.ANCHOR))


class System:
    """Handles to every component of a running job."""

    def __init__(self, job: JobConfig):
        self.job = job
        res = job.resources
        self._groups = []
        sampler_cls = sampler_class(job.models.sampler_backend)
        self.actors: dict[Role, list] = {}
        for role, count in ((Role.POLICY, res.policy_actors), (Role.ANCHOR, res.anchor_actors)):
            pg = self._placement([{"CPU": res.cpus_per_actor, "GPU": res.gpus_per_actor}] * count)
            self.actors[role] = [
                ray.remote(sampler_cls).options(
                    num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor, runtime_env={"env_vars": SAMPLER_ENV},
                    scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
                    name=None,
                ).remote(job.models.policy, role, dtype=job.models.sampler_dtype, seed=job.run.seed + 1000 * i
                         + (0 if role is Role.POLICY else 500))
                for i in range(count)
            ]
        pg = self._placement([{"CPU": res.cpus_per_learner, "GPU": res.gpus_per_learner}] * res.learner_ranks)
        strategy = [PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
                    for i in range(res.learner_ranks)]
        addr, port = ray.get(ray.remote(_free_port).options(num_cpus=0, scheduling_strategy=strategy[0]).remote())
        self.learner = [
            ray.remote(LearnerRank).options(num_cpus=res.cpus_per_learner, num_gpus=res.gpus_per_learner,
                                            scheduling_strategy=strategy[r]).remote(
                job, job.models.policy, r, res.learner_ranks, addr, port)
            for r in range(res.learner_ranks)
        ]
        self.reward = serve_app.deploy(job.reward)
        ray.get([a.__ray_ready__.remote() for group in self.actors.values() for a in group]
                + [r.__ray_ready__.remote() for r in self.learner])
        on_gpu = job.learner.device.value == "cuda"
        self.weight_sync = choose_method(job.run.weight_sync, ray.get(self.learner[0].model_bytes.remote()), on_gpu)
        if self.weight_sync is WeightSyncMethod.COLLECTIVE:
            for role, actors in self.actors.items():
                open_weight_group(self.learner, actors, role, "nccl" if on_gpu else "gloo",
                                  job.run.weight_sync_timeout_s)

    def _placement(self, bundles: list[dict[str, float]]):
        bundles = [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.01} for b in bundles]
        pg = placement_group(bundles, strategy="PACK")
        ray.get(pg.ready())
        self._groups.append(pg)
        return pg

    # --- the verbs the loop uses -------------------------------------------------------------------------

    def start_sampling(self, prompts: Sequence[tuple[int, str]], n_anchor: int,
                       settings: SamplingSettings) -> tuple[list, list]:
        """Ask the policy actors for 1 sample and the anchor actors for n per prompt (futures)."""
        return self._fan_out(Role.POLICY, prompts, 1, settings), self._fan_out(Role.ANCHOR, prompts, n_anchor, settings)

    def _fan_out(self, role: Role, prompts: Sequence[tuple[int, str]], n: int, settings: SamplingSettings) -> list:
        actors, settings = self.actors[role], role_settings(settings, role)
        shares = [prompts[i::len(actors)] for i in range(len(actors))]
        return [a.generate.remote([p for _, p in share], n, settings, prompt_ids=[i for i, _ in share])
                for a, share in zip(actors, shares, strict=True) if share]

    @staticmethod
    def finish_sampling(job: tuple[list, list]) -> Samples:
        policy_refs, anchor_refs = job
        return Samples(policy=[c for part in ray.get(policy_refs) for c in part],
                       anchor=[c for part in ray.get(anchor_refs) for c in part])

    def score(self, completions: Sequence[Completion], chunk: int = 16) -> list[ScoredCompletion]:
        """Score through the reward service, in concurrent chunks so its batcher and replicas share the load."""
        chunks = [completions[i:i + chunk] for i in range(0, len(completions), chunk)]
        replies = [self.reward.score.remote([c.prompt for c in part], [c.text for c in part]) for part in chunks]
        scored = []
        for part, reply in zip(chunks, replies, strict=True):
            result = reply.result()
            scored += [ScoredCompletion(c, reward=r, reward_model_id=result.reward_model_id)
                       for c, r in zip(part, result.rewards, strict=True)]
        return scored

    def learn(self, batch: Batch) -> StepStats:
        ref = ray.put(batch)  # one put, every rank reads it and takes its share
        return ray.get([rank.step.remote(ref) for rank in self.learner])[0]

    def sync(self, role: Role) -> SyncReport:
        if self.weight_sync is WeightSyncMethod.COLLECTIVE:
            return push_weights_collective(self.learner, self.actors[role], role, self.job.run.weight_sync_timeout_s)
        return push_weights(self.learner, self.actors[role], role)

    def save(self, directory: Path, extra: dict) -> None:
        ray.get([rank.save.remote(str(directory), extra) for rank in self.learner])

    def restore(self, directory: Path) -> dict:
        return ray.get([rank.restore.remote(str(directory)) for rank in self.learner])[0]

    def export_hf(self, directory: Path) -> None:
        ray.get([rank.export_hf.remote(str(directory)) for rank in self.learner])

    def shutdown(self) -> None:
        serve_app.shutdown()
        for group in self.actors.values():
            for a in group:
                ray.kill(a)
        for r in self.learner:
            ray.kill(r)
        for pg in self._groups:
            remove_placement_group(pg)


def sampler_class(backend: SamplerBackend):
    if backend is SamplerBackend.VLLM:
        from actors.vllm_sampler import VllmSampler

        return VllmSampler
    from actors.hf_sampler import HfSampler

    return HfSampler


def init_ray(job: JobConfig) -> None:
    """Join the cluster of `ray job submit` / RAY_ADDRESS / run.ray_address, or start a local one."""
    address = job.run.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    for key, value in SERVE_PROXY_ENV.items():
        os.environ.setdefault(key, value)
    res = job.resources
    needed = ((res.policy_actors + res.anchor_actors) * res.cpus_per_actor + res.learner_ranks * res.cpus_per_learner
              + job.reward.replicas * job.reward.cpus_per_replica + 1)
    kwargs = {"_metrics_export_port": job.run.metrics_export_port} if job.run.metrics_export_port else {}
    # Locally, logical CPUs may exceed the cores: a laptop debugging run oversubscribes rather than deadlocks.
    ray.init(num_cpus=max(os.cpu_count() or 1, int(needed + 0.999)), include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}}, **kwargs)
