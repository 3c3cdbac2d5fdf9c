"""ReST (Gulcehre et al. 2023; docs/algorithm.md section 4) on the job's actors, reward service and learner: rounds of
Grow then Improve, in place of loop.train when algorithm=rest.

- Grow: algorithm.rest_grow_prompts prompts from the prompt cursor, rest_samples_per_prompt samples of each from
  the policy actors (seeded by the round's first step: a repeated round draws the same), scored by the reward
  service and written as RLDS episodes to run_dir/grow/step_N.parquet (N: the learner step the round starts at).
- Improve: one phase per algorithm.rest_quantiles entry, rising (bond/rest.py): SFT steps of prompts_per_step
  samples over the Grow samples whose reward reaches that quantile of the round's rewards.
- The policy's weights go to its actors at the end of the round (the next Grow samples with them), before an
  evaluation, and at the end of the run. Only policy actors are started: rest samples nothing else
  (bond.sampling_plan).
run.steps counts SFT steps over all rounds; a run may end inside a round.

Resume: a checkpoint holds (step, cursor) as the J-BOND loop's does. A round's batches are a pure function of its
Grow rewards and seed, so the round in progress at the checkpoint's step is rebuilt from its Grow file and the
resumed run takes exactly the uninterrupted run's batches; a checkpoint at a round's end starts a new Grow.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bond.records import Batch, Prompt, Role, ScoredCompletion
from bond.rest import ImprovePhase, improve_schedule
from cluster.config.job import JobConfig
from cluster.config.prompts import take
from cluster.core import LoopState, StepRecord, System
from cluster.outputs.episodes import EpisodeWriter, read_scored
from cluster.training import evaluation
from cluster.training.loop import score_with_retries
from cluster.training.seeds import step_seed
from learner.checkpoint_dir import CheckpointError

GROW_DIR = "grow"
_GROW_FILE = re.compile(r"step_(\d+)\.parquet")


@dataclass(frozen=True)
class Round:
    start_step: int  # learner steps done when the round's Grow sampled
    dataset: tuple[ScoredCompletion, ...]  # [rest_grow_prompts * rest_samples_per_prompt] the Grow samples
    phases: tuple[ImprovePhase, ...]  # one per quantile

    @property
    def batches(self) -> list[tuple[int, ...]]:
        """[steps][B] indices into dataset, phase after phase."""
        return [b for phase in self.phases for b in phase.batches]

    @property
    def end_step(self) -> int:
        return self.start_step + len(self.batches)


def plan(job: JobConfig, start_step: int, dataset: Sequence[ScoredCompletion]) -> Round:
    phases = improve_schedule(
        [s.reward for s in dataset],
        job.algorithm.rest_quantiles,
        job.algorithm.prompts_per_step,
        seed=_round_seed(job, start_step),
    )
    return Round(start_step, tuple(dataset), phases)


def _round_seed(job: JobConfig, start_step: int) -> int:
    return step_seed(job.run.seed, start_step)  # the loop's per-step seed: a resumed round repeats its draws


def round_in_progress(job: JobConfig, run_dir: Path, step: int) -> Round | None:
    """The round a run resumed at `step` is inside, rebuilt from its Grow file (None: step starts a new round).
    Grow files of rounds starting at or after `step` belong to the abandoned future of an earlier attempt and
    are removed; rounds are contiguous, so a missing file of the round in progress is detected, not skipped."""
    found = sorted(
        (int(m.group(1)), p) for p in (run_dir / GROW_DIR).glob("step_*.parquet") if (m := _GROW_FILE.fullmatch(p.name))
    )
    for start, path in found:
        if start >= step:
            path.unlink()
    earlier = [(start, path) for start, path in found if start < step]
    if not earlier:
        if step > 0:
            raise CheckpointError(f"resuming rest at step {step}: no Grow dataset in {run_dir / GROW_DIR}")
        return None
    current = plan(job, earlier[-1][0], read_scored(earlier[-1][1]))
    if current.end_step < step:
        raise CheckpointError(
            f"resuming rest at step {step}: the newest Grow dataset before it "
            f"({earlier[-1][1].name}) ends at step {current.end_step}; the round in progress is "
            "missing"
        )
    return current if current.end_step > step else None


def grow(
    job: JobConfig, system: System, prompts: Sequence[Prompt], state: LoopState, writer: EpisodeWriter, metrics=None
) -> tuple[Round, LoopState, dict[str, float]]:
    """Sample and score one Grow dataset from the policy; the cursor moves past its prompts."""
    t0 = time.perf_counter()
    algo = job.algorithm
    chosen, cursor = take(tuple(prompts), state.cursor, algo.rest_grow_prompts, job.prompts.seed, job.prompts.shuffle)
    settings = dataclasses.replace(job.sampling, seed=_round_seed(job, state.step))
    completions = system.samplers.sample(Role.POLICY, [p for _, p in chosen], algo.rest_samples_per_prompt, settings)
    t_sampled = time.perf_counter()
    scored = score_with_retries(system.scorer, completions, metrics)
    writer.write(state.step, scored)
    seconds = {"grow_sample": t_sampled - t0, "grow_score": time.perf_counter() - t_sampled}
    if metrics:
        metrics.record_tokens(Role.POLICY.value, sum(len(c.token_ids) for c in completions), seconds["grow_sample"])
    return plan(job, state.step, scored), LoopState(step=state.step, cursor=cursor), seconds


def describe(rnd: Round) -> str:
    rewards = [s.reward for s in rnd.dataset]
    phases = ", ".join(
        f"q{p.quantile:g}: r >= {p.threshold:+.3f} keeps {p.kept} ({len(p.batches)} steps)" for p in rnd.phases
    )
    return (
        f"rest round at step {rnd.start_step}: grew {len(rewards)} samples, mean reward "
        f"{sum(rewards) / len(rewards):+.3f}; improve {phases}"
    )


def train(
    job: JobConfig,
    system: System,
    prompts: Sequence[Prompt],
    start: LoopState,
    on_step: Callable[[StepRecord], None],
    run_dir: Path,
    note: Callable[[str], None] = print,
    metrics=None,
) -> LoopState:
    B, state = job.algorithm.prompts_per_step, start
    writer = EpisodeWriter(Path(run_dir) / GROW_DIR)
    current = round_in_progress(job, Path(run_dir), state.step)
    while state.step < job.run.steps:
        seconds: dict[str, float] = {}
        if current is None or state.step == current.end_step:
            current, state, seconds = grow(job, system, prompts, state, writer, metrics)
            note(describe(current))
        chosen = current.batches[state.step - current.start_step]
        t0 = time.perf_counter()
        stats = system.learner.learn(Batch(policy=tuple((current.dataset[i],) for i in chosen), target=((),) * B))
        t_learned = time.perf_counter()
        state = LoopState(step=state.step + 1, cursor=state.cursor)
        syncs = {}
        if state.step in (current.end_step, job.run.steps) or evaluation.due(state.step, job.eval, job.run.steps):
            # what samples next (Grow, evaluation) sees these weights
            syncs[Role.POLICY] = system.learner.sync(Role.POLICY)
        seconds.update(learn=t_learned - t0, **({"sync": time.perf_counter() - t_learned} if syncs else {}))
        on_step(
            StepRecord(
                stats=stats,
                samples=tuple(current.dataset[i] for i in chosen),
                seconds=seconds,
                syncs=syncs,
                state=state,
            )
        )
    return state
