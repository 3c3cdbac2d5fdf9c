"""Where each process of a job runs: the placement groups to reserve and every process's slot in them.

Split (the default): the policy actors, the anchor actors and the learner ranks each reserve their own bundles
(cpus_per_actor / gpus of an engine, cpus_per_learner / gpus_per_learner), on nodes carrying
resources.actor_node_labels / learner_node_labels. Colocated (resources.colocate): one bundle per learner rank
holds that rank and, round-robin, the actors; every process takes an equal share of its bundle, so on GPU
they share one device (fractional GPUs) and on CPU the same cores, and the schedule (cluster/runtime/learner_group.py
RayLearnerGroup.learn) makes them take turns. Pure planning, no Ray calls: cluster/runtime/ray_system.py reserves
what this says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bond.records import Role
from cluster.config.job import ResourcesConfig

LEARNER = "learner"
SHARED = "shared"  # the colocated group: learner ranks and actors together


@dataclass(frozen=True)
class Slot:
    """One process's place: bundle `bundle` of placement group `group`, and what it asks Ray for there."""

    group: str  # a key of Plan.groups
    bundle: int
    num_cpus: float
    num_gpus: float
    omp_threads: int | None  # set OMP_NUM_THREADS (colocated CPU processes: Ray would give a fraction 1 thread)


@dataclass(frozen=True)
class Group:
    bundles: tuple[dict[str, float], ...]
    labels: dict[str, str]  # every bundle on a node with these labels ({}: any node)


@dataclass(frozen=True)
class Plan:
    groups: dict[str, Group]
    actors: dict[Role, tuple[Slot, ...]]
    learner: tuple[Slot, ...]


def _share(amount: float, parts: int) -> float:
    """amount / parts rounded down to Ray's resource granularity (1e-4), so the parts always fit the bundle."""
    return math.floor(amount / parts * 10_000) / 10_000


def plan(res: ResourcesConfig, actor_gpus: float, roles: Sequence[Role] = (Role.POLICY, Role.ANCHOR)) -> Plan:
    """actor_gpus: GPUs one actor's engine needs in split mode (JobConfig.actor_gpus: tensor parallel shards);
    roles: whose sampling actors to place (JobConfig.actor_roles: what the algorithm samples)."""
    counts = {role: res.actors(role) for role in roles}
    if not res.colocate:
        groups = {
            role.value: Group(({"CPU": res.cpus_per_actor, "GPU": actor_gpus},) * count, res.actor_node_labels)
            for role, count in counts.items()
        }
        groups[LEARNER] = Group(
            ({"CPU": res.cpus_per_learner, "GPU": res.gpus_per_learner},) * res.learner_ranks, res.learner_node_labels
        )
        return Plan(
            groups,
            {
                role: tuple(Slot(role.value, i, res.cpus_per_actor, actor_gpus, None) for i in range(count))
                for role, count in counts.items()
            },
            tuple(Slot(LEARNER, r, res.cpus_per_learner, res.gpus_per_learner, None) for r in range(res.learner_ranks)),
        )
    ranks = res.learner_ranks
    actors = [(role, i) for role, count in counts.items() for i in range(count)]
    bundle_of = {actor: k % ranks for k, actor in enumerate(actors)}  # round-robin over the ranks' bundles
    in_bundle = [sum(1 for b in bundle_of.values() if b == r) for r in range(ranks)]  # actors per bundle
    on_cpu = res.gpus_per_learner == 0
    cores = max(1, int(res.cpus_per_learner))

    def slot(bundle: int, threads: int) -> Slot:
        members = in_bundle[bundle] + 1  # its actors and the rank
        return Slot(
            SHARED,
            bundle,
            _share(res.cpus_per_learner, members),
            _share(res.gpus_per_learner, members),
            threads if on_cpu else None,
        )

    # Threads: the rank trains alone on the bundle's cores; its actors sample at the same time, so they split them.
    return Plan(
        {SHARED: Group(({"CPU": res.cpus_per_learner, "GPU": res.gpus_per_learner},) * ranks, res.learner_node_labels)},
        {
            role: tuple(slot(bundle_of[role, i], max(1, cores // in_bundle[bundle_of[role, i]])) for i in range(count))
            for role, count in counts.items()
        },
        tuple(slot(r, cores) for r in range(ranks)),
    )
