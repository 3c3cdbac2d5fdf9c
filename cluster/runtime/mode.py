"""run.mode auto: sync or pipelined, whichever is faster for this job where it runs.

Before anything starts, `decide` rules from what each role holds: sync where pipelining cannot run
(JobConfig.sync_only) or cannot add compute (every process on the same CPU cores); otherwise the loop probes
(`ModeSchedule`): PROBE_STEPS steps sync, PROBE_STEPS pipelined, then the faster for the rest of the run. A resumed
auto job decides, and probes, again from the step it resumes at.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cluster.config.job import JobConfig, Mode
from cluster.runtime.threads import node_cores, reserved_threads

PROBE_STEPS = 3  # steps per mode; the first of each is a warm-up (caches, the pipeline filling) and is not timed


@dataclass(frozen=True)
class Decision:
    mode: Mode  # SYNC, or AUTO: probe by timing
    reason: str  # one line


def decide(job: JobConfig, cores: int | None) -> Decision:
    """The rule for an auto job. cores: the local node's (None: nodes of a Ray cluster, unknown here)."""
    if job.sync_only:
        return Decision(Mode.SYNC, job.sync_only)
    res, reward = job.resources, job.reward
    if cores is not None and job.actor_gpus == 0 and res.gpus_per_learner == 0:
        # pipelined, every process runs its reserved threads at the same time
        needed = (
            sum(map(res.actors, job.actor_roles)) * reserved_threads(res.cpus_per_actor)
            + res.learner_ranks * reserved_threads(res.cpus_per_learner)
            + reward.replicas * reserved_threads(reward.cpus_per_replica)
        )
        if needed > cores:
            return Decision(
                Mode.SYNC,
                f"the actors, learner ranks and reward replicas on CPU need {needed} cores side by side and the node "
                f"has {cores}: overlapping them adds no compute",
            )
        return Decision(Mode.AUTO, f"the roles' {needed} reserved cores fit the node's {cores}: timing both modes")
    where = "run on a Ray cluster's nodes (cores unknown here)" if cores is None else "compute on GPUs"
    return Decision(Mode.AUTO, f"the roles {where}: timing both modes")


def resolve(job: JobConfig, cluster_nodes: int = 1) -> JobConfig:
    """An auto job as it will start: run.mode sync where the rule says so (before any process starts: their thread
    counts follow the mode), else still auto, for the loop to probe. Other modes are returned as they are.

    cluster_nodes: live nodes of the Ray cluster the job runs on. On one node (a local Ray, or `ray job submit` to a
    one-machine head such as `make monitor`'s) every process shares the driver's cores; on several, cores are
    unknown here."""
    if job.run.mode is not Mode.AUTO:
        return job
    decision = decide(job, node_cores() if cluster_nodes == 1 else None)
    print(f"run.mode auto -> {'sync' if decision.mode is Mode.SYNC else 'probe'}: {decision.reason}", flush=True)
    return dataclasses.replace(job, run=dataclasses.replace(job.run, mode=decision.mode))


def faster(sync_seconds: Sequence[float], pipelined_seconds: Sequence[float]) -> Mode:
    """The mode with the lower median seconds per step; a tie keeps sync (on-policy)."""
    return Mode.PIPELINED if statistics.median(pipelined_seconds) < statistics.median(sync_seconds) else Mode.SYNC


class ModeSchedule:
    """The mode of each step: run.mode, or for auto from step `start` the probe, then the faster mode."""

    def __init__(self, mode: Mode, start: int, note: Callable[[str], None] = print):
        self.mode, self.start, self.note = mode, start, note
        self.seconds: dict[Mode, list[float]] = {Mode.SYNC: [], Mode.PIPELINED: []}

    def mode_at(self, step: int) -> Mode:
        if self.mode is not Mode.AUTO:
            return self.mode
        return Mode.SYNC if step - self.start < PROBE_STEPS else Mode.PIPELINED

    def record(self, step: int, seconds: float) -> None:
        """Time step `step` (its wall seconds, what it waited for included); after the probe, pick the mode."""
        if self.mode is not Mode.AUTO:
            return
        if (step - self.start) % PROBE_STEPS:  # not a window's warm-up
            self.seconds[self.mode_at(step)].append(seconds)
        if step - self.start == 2 * PROBE_STEPS - 1:
            self.mode = faster(self.seconds[Mode.SYNC], self.seconds[Mode.PIPELINED])
            medians = ", ".join(f"{m} {statistics.median(s):.3f}" for m, s in self.seconds.items())
            self.note(f"run.mode auto: median s/step {medians}: {self.mode} from step {step + 2}")
