"""How many torch/OpenMP threads each process of a job runs: the cores it is given, not Ray's default.

Ray starts an actor with a fractional num_cpus with OMP_NUM_THREADS=1, so a learner rank reserving 0.5 CPU
computed on one thread of a 2-core machine (measured at 27 M parameters: 10.6 s a step inside Ray vs 5.5 s
in-process). With resources.threads = phase (the default) a process gets the cores of the phase it works in:
in sync mode the phases (sample, score, learn) take turns, so the active phase may use the cores the idle
ones reserve. The learner ranks share the node's cores while they learn, the policy and anchor actors share
them while they sample, the reward replicas while they score. In pipelined mode sampling overlaps learning,
so every process keeps its reservation (rounded up to a whole thread).

The counts are fixed per process (set when the process starts): each process computes only in its own phase,
and vLLM's CPU backend refuses torch.set_num_threads once its engine is up. Node cores are the driver's
(len(os.sched_getaffinity)): on a cluster whose nodes differ from the driver's machine, use `reserved`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from cluster.config.job import Mode, ThreadPolicy


@dataclass(frozen=True)
class ThreadCounts:
    """torch intra-op threads (and OMP_NUM_THREADS) of each kind of process."""

    learner: int  # per learner rank
    actor: int  # per sampling actor (policy and anchor)
    reward: int  # per reward replica


def node_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count: containers and taskset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_counts(
    policy: ThreadPolicy,
    sync: bool,
    cores: int,
    *,
    learner_ranks: int,
    actors: int,
    reward_replicas: int,
    cpus_per_learner: float,
    cpus_per_actor: float,
    cpus_per_replica: float,
) -> ThreadCounts:
    """The thread count of each kind of process (see the module docstring)."""
    if policy is ThreadPolicy.PHASE and sync:
        return ThreadCounts(
            learner=max(1, cores // learner_ranks),
            actor=max(1, cores // actors),
            reward=max(1, cores // reward_replicas),
        )
    return ThreadCounts(
        learner=reserved_threads(cpus_per_learner),
        actor=reserved_threads(cpus_per_actor),
        reward=reserved_threads(cpus_per_replica),
    )


def reserved_threads(cpus: float) -> int:
    return max(1, math.ceil(cpus - 1e-9))


def thread_env(threads: int) -> dict[str, str]:
    """Environment of a process that should run `threads` threads (read by torch and OpenMP at start-up)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def job_threads(job) -> ThreadCounts:
    """thread_counts for a cluster.config.job.JobConfig on this node's cores."""
    res = job.resources
    return thread_counts(
        res.threads,
        # auto left by cluster.main (mode.resolve) is probed and may keep pipelined: the counts fixed at start-up
        # must be pipelined's, what overlapping processes can run side by side
        job.run.mode is Mode.SYNC,
        node_cores(),
        learner_ranks=res.learner_ranks,
        actors=sum(map(res.actors, job.actor_roles)),
        reward_replicas=job.reward.replicas,
        cpus_per_learner=res.cpus_per_learner,
        cpus_per_actor=res.cpus_per_actor,
        cpus_per_replica=job.reward.cpus_per_replica,
    )
