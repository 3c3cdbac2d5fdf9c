"""Placing and wiring the roles on Ray: the sampler pool (cluster/runtime/samplers.py), the reward service
(scorer.py, on Serve) and the learner group (learner_group.py), each on the bundles placement reserves.

The same code runs on one laptop and on a cluster: placement groups reserve each role's bundles, and
every component is the plain class from actors/, learner/ or reward_service/ run as a Ray actor (or a
Serve deployment). The algorithm never sees Ray; cluster/runtime/ is where Ray lives.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from bond.records import Role
from cluster.config.job import JobConfig, SamplerBackend
from cluster.core import System
from cluster.runtime import placement
from cluster.runtime.components import sampler_class, sampler_kwargs
from cluster.runtime.learner_group import RayLearnerGroup, anchor_follows
from cluster.runtime.learner_rank import LearnerRank
from cluster.runtime.ports import node_port
from cluster.runtime.samplers import Fleet, RaySamplerPool, sampler_env
from cluster.runtime.scorer import RayScorer
from cluster.runtime.threads import ThreadCounts, job_threads, thread_env
from cluster.training.seeds import actor_seed
from reward_service import serve_app

# Serve kills its HTTP proxy after 3 readiness checks of 5 s; on a busy 2-core machine (vLLM engines and the
# learner starting beside it) the proxy can need longer, and serve.start then fails with ActorDiedError.
# Ray processes inherit this from the process that starts them (init_ray below, or a user's `ray start`).
SERVE_PROXY_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}

# A quiet console (run.verbose=false): Serve's log lines (with its per-request access log) go to its log
# files only, not also to each worker's stderr.
QUIET_ENV = {"RAY_SERVE_LOG_TO_STDERR": "0"}

T = TypeVar("T")


class Reservation:
    """The placement groups of a job's layout (cluster/runtime/placement.py), and each process's place in them."""

    def __init__(self, layout: placement.Plan):
        self.groups = {name: _reserve(group, name) for name, group in layout.groups.items()}

    def options(self, slot: placement.Slot, env: dict[str, str]) -> dict:
        """Ray options of the process in `slot`, with `env` (a colocated CPU slot's share of the bundle's cores
        overrides resources.threads' count)."""
        env = {**env, **(thread_env(slot.omp_threads) if slot.omp_threads else {})}
        return dict(
            num_cpus=slot.num_cpus,
            num_gpus=slot.num_gpus,
            **({"runtime_env": {"env_vars": env}} if env else {}),
            scheduling_strategy=self.strategy(slot),
        )

    def strategy(self, slot: placement.Slot) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(self.groups[slot.group], placement_group_bundle_index=slot.bundle)

    def node_id(self, slot: placement.Slot) -> str:
        """The id (hex) of the node that holds `slot`'s bundle."""
        return ray.util.placement_group_table(self.groups[slot.group])["bundles_to_node_id"][slot.bundle]

    def close(self) -> None:
        for pg in self.groups.values():
            remove_placement_group(pg)


def _reserve(group: placement.Group, name: str):
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
    return pg


def _has_labels(node: dict, labels: dict[str, str]) -> bool:
    return all(node.get("Labels", {}).get(k) == v for k, v in labels.items())


def start_system(job: JobConfig, metrics=None, roles: Sequence[Role] | None = None) -> System:
    """Start every component of a job. roles: whose sampling workers to start (default job.actor_roles, what the
    algorithm samples); add Role.REFERENCE to evaluate Best-of-N of the reference (evaluation.bon_curve) in a job
    that trains without."""
    t0, res, threads = time.perf_counter(), job.resources, job_threads(job)
    actor_roles = tuple(dict.fromkeys(roles or job.actor_roles))
    layout = placement.plan(res, job.actor_gpus, actor_roles)  # actor_gpus: a tensor-parallel engine's shards
    reservation = Reservation(layout)
    startup = {"placement groups": time.perf_counter() - t0}
    tag = uuid.uuid4().hex[:8]  # names like jbond-1a2b3c4d-policy-0: findable in the dashboard and state API
    # Serve deploys from the start, beside everything else: it brings up its controller, then its HTTP proxy, then
    # the replica, one after the other, and deployed after the engines and ranks it came up last, 6-7 s behind them.
    deployed = _in_background(_deployed, job.reward, thread_env(threads.reward), t0)
    samplers = _start_samplers(job, layout, reservation, threads, tag)
    ranks = _start_ranks(job, layout, reservation, threads, tag)
    parts = {f"{role}-{i}": actor for role, group in samplers.items() for i, actor in enumerate(group)}
    startup |= _ready_seconds(parts | {f"learner-{r}": rank for r, rank in enumerate(ranks)}, t0)
    handle, startup["reward service"] = deployed()
    startup = dict(sorted(startup.items(), key=lambda part: part[1]))  # in the order the parts came up
    fleet = Fleet(samplers, res.max_actor_restarts, metrics)
    # Colocated: the engines give their memory back while the learner steps (RayLearnerGroup.learn).
    sleeps = job.engine.enable_sleep_mode or (res.colocate and job.models.sampler_backend is SamplerBackend.VLLM)
    scorer = RayScorer(handle, job.reward.request_timeout_s)
    if res.colocate and sleeps and res.gpus_per_actor == 0:
        # vLLM zero-fills the whole CPU KV cache at start, so all of it is resident; colocated engines give
        # it back at once and from then on hold only what a sampling round touches.
        released = fleet.sleep()
        fleet.wake_up()
        print(f"colocated: engines released {released / 2**20:.0f} MiB of KV cache at start", flush=True)
    learner = RayLearnerGroup(job, ranks, fleet, sleeps)
    return System(RaySamplerPool(fleet, learner, scorer), scorer, learner, reservation, startup)


def _in_background(fn: Callable[..., T], *args) -> Callable[[], T]:
    """Call fn(*args) on a daemon thread (one that never holds the process open: a start that fails elsewhere does
    not wait for it); the returned function waits for its result, or raises its exception."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as e:  # handed to the caller of result()
            outcome["error"] = e

    thread = threading.Thread(target=call, name=getattr(fn, "__name__", "background"), daemon=True)
    thread.start()

    def result() -> T:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return result


def _deployed(spec, env: dict[str, str], t0: float):
    """The reward service's handle once its replicas are up, and the seconds from t0 until then."""
    handle = serve_app.deploy(spec, env_vars=env)
    return handle, time.perf_counter() - t0


def _ready_seconds(actors: dict, t0: float) -> dict[str, float]:
    """Seconds from t0 until each named actor's constructor returned (its imports, model load, engine start),
    in the order they came up; a constructor that raised raises here."""
    pending = {actor.__ray_ready__.remote(): name for name, actor in actors.items()}
    seconds = {}
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        ray.get(done)
        seconds[pending.pop(done)] = time.perf_counter() - t0
    return seconds


def _start_samplers(
    job: JobConfig, layout: placement.Plan, reservation: Reservation, threads: ThreadCounts, tag: str
) -> dict[Role, list]:
    sampler_cls, engine_kwargs = sampler_class(job.models.sampler_backend), sampler_kwargs(job)
    follows = anchor_follows(job, tuple(layout.actors))
    role_kwargs = {Role.ANCHOR: {"anchor_ema": job.algorithm.eta}} if follows else {}
    env = {**sampler_env(job.actor_gpus, job.engine.enforce_eager), **thread_env(threads.actor)}
    return {
        role: [
            ray.remote(sampler_cls)
            .options(
                **reservation.options(slot, env),
                # Ray restarts a dead actor (same bundle, same constructor: base weights, version 0); the
                # driver re-syncs it and redraws its share (samplers.py). Its in-flight tasks fail, not retry.
                max_restarts=job.resources.max_actor_restarts,
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
        for role, slots in layout.actors.items()
    }


def _start_ranks(
    job: JobConfig, layout: placement.Plan, reservation: Reservation, threads: ThreadCounts, tag: str
) -> list:
    """The learner ranks, their process group's store on a free port of the first rank's node."""
    addr, port = _free_port_on(reservation, layout.learner[0])
    ranks = job.resources.learner_ranks
    return [
        ray.remote(LearnerRank)
        .options(**reservation.options(slot, thread_env(threads.learner)), name=f"jbond-{tag}-learner-{r}")
        .remote(job, job.models.policy, r, ranks, addr, port, threads=slot.omp_threads or threads.learner)
        for r, slot in enumerate(layout.learner)
    ]


def _free_port_on(reservation: Reservation, slot: placement.Slot) -> tuple[str, int]:
    """A free port on the node of `slot`, and that node's address: found here when it is this driver's node (one
    machine), else by a task there (which costs that node a worker process)."""
    if reservation.node_id(slot) == ray.get_runtime_context().get_node_id():
        return node_port()
    return ray.get(ray.remote(node_port).options(num_cpus=0, scheduling_strategy=reservation.strategy(slot)).remote())


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
