"""The training loop (the paper's Algorithm 2, and the rest of the family), on whatever `System` placed the
components. What a step samples (which roles, how many per prompt) is the algorithm's SamplingPlan
(bond/sampling_plan.py); the learner picks the matching loss.

Synchronous mode is exactly on-policy. Pipelined mode only changes *when* sampling runs: the actors
sample steps t+1 .. t+run.pipeline_depth while the learner trains on step t, so a sample is up to
pipeline_depth versions behind; the learner importance-weights such samples with their recorded sampler
log-probabilities (bond/off_policy.py), and anything older than run.max_staleness is dropped (counted) and
redrawn with the current weights. run.mode auto (cluster/runtime/mode.py) runs sync, pipelined, or both in turn
then the faster: a switch back to sync first takes the steps already in flight (within max_staleness, as pipelined).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence

from bond.records import Batch, Completion, Prompt, Role, ScoredCompletion, StepStats
from bond.sampling_plan import SamplingPlan, sampling_plan
from cluster.config.job import JobConfig, Mode
from cluster.config.prompts import PromptCursor, take
from cluster.core import LoopState, SamplerPool, Scorer, StepRecord, System
from cluster.runtime.mode import ModeSchedule
from cluster.training.failures import ScoringFailedError, first_line
from cluster.training.seeds import step_seed
from reward_service.errors import RewardServiceError, RewardTimeoutError


def make_batch(scored: Sequence[ScoredCompletion], plan: SamplingPlan) -> Batch:
    """Group each prompt's samples by role (prompt_id = position in the step), checking the plan's counts: a
    prompt with a missing or extra sample is an error here, never a silently smaller batch."""
    groups: dict[Role, dict[int, list[ScoredCompletion]]] = {role: {} for role in plan.roles}
    for s in scored:
        if s.completion.role not in groups:
            raise ValueError(f"make_batch: a {s.completion.role} sample, but this plan samples {plan.roles}")
        groups[s.completion.role].setdefault(s.completion.prompt_id, []).append(s)
    ids = sorted(groups[Role.POLICY])
    for role, n in plan.draws:
        counts = {i: len(groups[role].get(i, ())) for i in ids}
        wrong = {i: c for i, c in counts.items() if c != n}
        if wrong or set(groups[role]) - set(ids):
            raise ValueError(
                f"make_batch: expected {n} {role} samples per prompt, got {wrong or counts} "
                f"(prompt ids without policy samples: {sorted(set(groups[role]) - set(ids))})"
            )
    target = groups[plan.target_role] if plan.target_role is not None else {}
    return Batch(
        policy=tuple(tuple(groups[Role.POLICY][i]) for i in ids), target=tuple(tuple(target.get(i, ())) for i in ids)
    )


def learner_version(stats: StepStats, role: Role) -> int:
    """The version of `role`'s weights after the step (the reference never changes: 0)."""
    return {Role.POLICY: stats.policy_version, Role.ANCHOR: stats.anchor_version, Role.REFERENCE: 0}[role]


SCORE_ATTEMPTS = 5  # backoff 1 + 2 + 4 + 8 s: Serve notices a dead replica within its 2 s health check
SCORE_BACKOFF_S = 1.0  # doubled after each failure: Serve needs a few seconds to replace a dead replica


def score_with_retries(scorer: Scorer, completions: Sequence[Completion], metrics=None) -> list[ScoredCompletion]:
    """A scoring call that fails for a transient reason (a replica that died, a timeout) is counted and retried
    with backoff; a deterministic failure (a bad request, a NaN reward, a model that raises) is not retried.
    Either way the job ends with one ScoringFailedError line, never a traceback."""
    for attempt in range(1, SCORE_ATTEMPTS + 1):
        try:
            return scorer.score(completions)
        except Exception as e:  # noqa: BLE001 - every failure is counted by type, then retried or reported
            reason = getattr(e, "reason", None) or type(e).__name__
            if metrics:
                metrics.record_error("reward_service", reason)
            transient = not isinstance(e, RewardServiceError) or isinstance(e, RewardTimeoutError)
            if not transient or attempt == SCORE_ATTEMPTS:
                tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                raise ScoringFailedError(f"scoring failed after {tries}: {reason}: {first_line(e)}") from None
            time.sleep(SCORE_BACKOFF_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


class Requests:
    """Sampling requests in flight, oldest first, each with the cursor after its prompts. Pipelined mode keeps
    steps t+1 .. t+pipeline_depth in flight while the learner trains on step t; sync mode only ever the next one."""

    def __init__(self, job: JobConfig, samplers: SamplerPool, prompts: Sequence[Prompt], start: LoopState):
        self.job, self.samplers, self.prompts = job, samplers, tuple(prompts)
        self.plan = sampling_plan(job.algorithm)  # e.g. J-BOND: 1 policy + 2 anchor samples per prompt
        self.in_flight: deque = deque()
        self.next_step, self.next_cursor = start.step, start.cursor  # next step to request, where its prompts start

    def send(self, step: int, cursor: PromptCursor):
        """Request step `step`'s samples of the B prompts from `cursor`; returns (pending, cursor after them)."""
        job = self.job
        chosen, after = take(
            self.prompts, cursor, job.algorithm.prompts_per_step, job.prompts.seed, job.prompts.shuffle
        )
        settings = dataclasses.replace(job.sampling, seed=step_seed(job.run.seed, step))
        return self.samplers.start(list(enumerate(p for _, p in chosen)), self.plan, settings), after

    def up_to(self, last: int) -> None:
        """Keep every step up to `last` (and before run.steps) requested."""
        while self.next_step <= min(last, self.job.run.steps - 1):
            self.in_flight.append(self.send(self.next_step, self.next_cursor))
            self.next_step, self.next_cursor = self.next_step + 1, self.in_flight[-1][1]


def fresh_samples(
    job: JobConfig, requests: Requests, state: LoopState, version: dict[Role, int], mode: Mode, metrics=None
):
    """The oldest request's samples (each role's, version-tagged) and the cursor after its prompts; never samples
    older than run.max_staleness: those are counted and redrawn with the current weights."""
    pending, cursor_after = requests.in_flight.popleft()
    samples = requests.samplers.finish(pending)
    if mode is Mode.PIPELINED:  # the actors sample ahead while we learn on step t
        requests.up_to(state.step + job.run.pipeline_depth)
    if metrics:
        metrics.record_queue_depth(len(requests.in_flight))
    stale = [
        c for c in samples.all() if version.get(c.role, c.weights_version) - c.weights_version > job.run.max_staleness
    ]
    if stale:
        if metrics:
            metrics.record_skip("stale", len(stale))
        samples = requests.samplers.finish(requests.send(state.step, state.cursor)[0])
    return samples, cursor_after


def train(
    job: JobConfig,
    system: System,
    prompts: Sequence[Prompt],
    start: LoopState,
    on_step: Callable[[StepRecord], None],
    metrics=None,
    note: Callable[[str], None] = print,
) -> LoopState:
    requests, state = Requests(job, system.samplers, prompts, start), start
    plan, schedule = requests.plan, ModeSchedule(job.run.mode, start.step, note)
    version: dict[Role, int] = {}  # each pushed role's version after the last step (unknown before the first)
    while state.step < job.run.steps:
        t_begin = time.perf_counter()
        requests.up_to(state.step)  # sync mode: this step's request (pipelined: already in flight)
        t0 = time.perf_counter()
        samples, cursor_after = fresh_samples(job, requests, state, version, schedule.mode_at(state.step), metrics)
        t_sampled = time.perf_counter()
        scored = score_with_retries(system.scorer, samples.all(), metrics)
        t_scored = time.perf_counter()
        stats = system.learner.learn(make_batch(scored, plan))  # the algorithm's loss, Adam, anchor update
        t_learned = time.perf_counter()
        syncs = {  # versioned, confirmed; the reference never changes, a copied anchor only sometimes
            role: system.learner.sync(role) for role in plan.pushed if learner_version(stats, role) != version.get(role)
        }
        version.update({role: learner_version(stats, role) for role in plan.pushed})
        t_synced = time.perf_counter()
        schedule.record(state.step, t_synced - t_begin)
        state = LoopState(step=state.step + 1, cursor=cursor_after)
        seconds = {
            "sample": t_sampled - t0,
            "score": t_scored - t_sampled,
            "learn": t_learned - t_scored,
            "sync": t_synced - t_learned,
        }
        on_step(StepRecord(stats=stats, samples=tuple(scored), seconds=seconds, syncs=syncs, state=state))
    return state
