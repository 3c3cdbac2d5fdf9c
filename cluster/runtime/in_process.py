"""Each role with every part in this one process and no Ray: the naive baseline of bench_system, and a way to
step through the training loop in a debugger.

Same classes as the distributed system (samplers, reward model, learner), so `loop.train` runs unchanged;
only the placement differs (RLlib's lesson: a component works in-process and remote alike).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

from actors.sampling import SamplingSettings
from bond.records import Batch, Completion, Prompt, Role, ScoredCompletion, StepStats
from bond.sampling_plan import SamplingPlan
from cluster.config.job import JobConfig
from cluster.core import Samples, SyncReport, System
from cluster.runtime.components import confirmed_version, reward_prompts, sampler_class, sampler_kwargs
from cluster.runtime.ports import free_port
from cluster.training.seeds import role_settings
from learner.learner import Learner
from reward_service.spec import build_reward_model


class InProcessSamplers:
    """One sampler per role."""

    def __init__(self, actors: dict[Role, list]):
        self.actors = actors

    def start(
        self, prompts: Sequence[tuple[int, Prompt]], plan: SamplingPlan, settings: SamplingSettings
    ) -> Callable[[], Samples]:
        """Nothing runs in the background here: the work is deferred to finish, so the loop's "sample" phase
        measures it (as it measures waiting on the Ray actors in the distributed system)."""
        return functools.partial(self._sample, prompts, plan, settings)

    def _sample(self, prompts: Sequence[tuple[int, Prompt]], plan: SamplingPlan, settings: SamplingSettings) -> Samples:
        ids, texts = [i for i, _ in prompts], [p for _, p in prompts]
        return Samples(
            by_role={
                role: self.actors[role][0].generate(texts, n, role_settings(settings, role), prompt_ids=ids)
                for role, n in plan.draws
            }
        )

    @staticmethod
    def finish(pending: Callable[[], Samples]) -> Samples:
        return pending()

    def sample(self, role: Role, prompts: Sequence[Prompt], n: int, settings: SamplingSettings) -> list[Completion]:
        return self.actors[role][0].generate(list(prompts), n, role_settings(settings, role))

    def close(self) -> None:
        for group in self.actors.values():
            for actor in group:
                close = getattr(actor, "close", None)
                if close:
                    close()


class InProcessScorer:
    def __init__(self, reward):
        self.reward = reward

    def score(self, completions: Sequence[Completion]) -> list[ScoredCompletion]:
        rewards = self.reward.score(reward_prompts(completions), [c.text for c in completions])
        return [
            ScoredCompletion(c, reward=r, reward_model_id=self.reward.model_id)
            for c, r in zip(completions, rewards, strict=True)
        ]

    def close(self) -> None:
        pass


class InProcessLearner(Learner):
    """The one learner rank; sync hands its buckets straight to the samplers' engines."""

    def __init__(self, job: JobConfig, samplers: InProcessSamplers):
        # its one-rank process group (a TCP store) on a free port: several in-process systems (bench.pareto's
        # parallel runs, other jobs on the machine) must not all claim the default 29500
        super().__init__(job.models.policy, job.algorithm, job.learner, master_port=free_port())
        self.samplers = samplers

    def learn(self, batch: Batch) -> StepStats:
        return self.step(batch)

    def sync(self, role: Role) -> SyncReport:
        t0, buckets, num_bytes, versions = time.perf_counter(), 0, 0, []
        for update in self.weights(role):
            versions = [actor.load_weights(update) for actor in self.samplers.actors[role]]
            buckets, num_bytes = buckets + 1, num_bytes + update.num_bytes
        return SyncReport(
            role=role,
            version=confirmed_version(role, versions, self.version(role), buckets),
            buckets=buckets,
            num_bytes=num_bytes,
            seconds=time.perf_counter() - t0,
        )

    def close(self) -> None:
        pass


def in_process_system(job: JobConfig, roles: Sequence[Role] | None = None) -> System:
    """roles: whose samplers to build (default job.actor_roles); one sampler per role here."""
    if job.resources.learner_ranks != 1:
        raise ValueError("resources.learner_ranks: the in-process system runs one learner rank")
    sampler_cls = sampler_class(job.models.sampler_backend)
    samplers = InProcessSamplers(
        {
            role: [sampler_cls(job.models.policy, role, **sampler_kwargs(job))]
            for role in dict.fromkeys(roles or job.actor_roles)
        }
    )
    return System(samplers, InProcessScorer(build_reward_model(job.reward)), InProcessLearner(job, samplers))
