"""The system's vocabulary: the records the training loop passes around and the roles it drives.

A step of J-BOND (and of every algorithm here) is: the actors sample completions of the plan's roles (the
SamplerPool), the reward service scores them (the Scorer), the learner steps on the batch and moves its anchor,
and the weights of every role that changed are pushed back to its actors (the LearnerGroup: the source the
actors' weights are synced from). `System` is those three roles together, the one object the loop talks to;
cluster/runtime/ has a Ray implementation of each role (actors, Serve, DeepSpeed ranks) and an in-process one
(the same classes in one process, for tests, benchmarks and studies). Nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from actors.sampling import SamplingSettings
from bond.divergence import KlEstimates
from bond.records import Batch, Completion, Prompt, Role, ScoredCompletion, StepStats
from bond.sampling_plan import SamplingPlan
from cluster.config.job import WeightSyncMethod
from cluster.config.prompts import PromptCursor


@dataclass(frozen=True)
class SyncReport:
    role: Role
    version: int  # the version every actor confirmed
    buckets: int
    num_bytes: int
    seconds: float
    method: WeightSyncMethod = WeightSyncMethod.OBJECT_STORE


@dataclass(frozen=True)
class Samples:
    """One step's completions of every role the plan samples."""

    by_role: Mapping[Role, list[Completion]]  # role -> [B * n_role], a prompt's n_role consecutive

    def all(self) -> list[Completion]:
        return [c for completions in self.by_role.values() for c in completions]


class SamplerPool(Protocol):
    """The sampling actors of every role. Faults it can survive (an actor restarted by Ray) never reach the loop."""

    def start(self, prompts: Sequence[tuple[int, Prompt]], plan: SamplingPlan, settings: SamplingSettings) -> Any:
        """Start drawing the plan's samples of each role per (prompt_id, prompt); returns what is pending."""

    def finish(self, pending: Any) -> Samples:
        """Wait for what start began (redrawing the share of an actor that died)."""

    def sample(self, role: Role, prompts: Sequence[Prompt], n: int, settings: SamplingSettings) -> list[Completion]:
        """n completions per prompt from the role's actors, in prompt order (evaluation, shown samples)."""

    def close(self) -> None: ...


class Scorer(Protocol):
    """The reward service."""

    def score(self, completions: Sequence[Completion]) -> list[ScoredCompletion]: ...

    def close(self) -> None: ...


class LearnerGroup(Protocol):
    """The learner ranks, and the source of every role's weights the actors are synced from."""

    def learn(self, batch: Batch) -> StepStats: ...

    def kl_to_reference(self, completions: Sequence[Completion], role: Role = Role.POLICY) -> KlEstimates:
        """Per-completion KL(pi_role || pi_ref) estimates from the learner's policy or anchor and reference."""

    def sync(self, role: Role) -> SyncReport:
        """Push `role`'s weights from the learner to its actors; every actor confirms the version."""

    def save(self, directory: Path, extra: dict, sha256: bool = True) -> None: ...

    def restore(self, directory: Path) -> dict: ...

    def export_hf(self, directory: Path) -> None: ...

    def close(self) -> None: ...


class Reservation(Protocol):
    """What a system holds beyond its roles (Ray's placement groups), released after them."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class System:
    """What the loop drives: cluster.runtime.ray_system.start_system (Ray) or cluster.runtime.in_process.system."""

    samplers: SamplerPool
    scorer: Scorer
    learner: LearnerGroup
    reservation: Reservation | None = None
    startup: dict[str, float] = field(default_factory=dict)  # seconds until each part was up (Ray's start_system)

    def shutdown(self) -> None:
        for part in (self.scorer, self.samplers, self.learner, self.reservation):
            if part is not None:
                part.close()


@dataclass(frozen=True)
class LoopState:
    step: int  # learner steps done
    cursor: PromptCursor  # first prompt not yet trained on


@dataclass(frozen=True)
class StepRecord:
    stats: StepStats
    samples: tuple[ScoredCompletion, ...]  # policy then target (anchor or reference) samples used in this step
    seconds: dict[str, float]  # sample / score / learn / sync wall-clock
    syncs: dict[Role, SyncReport]  # each pushed role's weight push (version, buckets, bytes, seconds); a role
    # whose weights did not change in this step (a periodically copied anchor between copies) is not pushed
    state: LoopState  # after this step


@dataclass(frozen=True)
class EvalResult:
    step: int  # learner steps done when evaluated (0: before training)
    mode: str  # "greedy" | "sampled"
    prompts: int  # held-out prompts used
    completions: int
    reward: float  # mean over completions
    reward_std: float
    kl_ref: float | None  # nats per completion, k1 = log pi(y) - log ref(y) (sampled only)
    kl_ref_tokenwise: float | None  # nats per completion, sum_t KL(pi || ref) at the sampled prefixes (sampled only)
    kl_ref_k3: float | None  # nats per completion, sum_t (r_t - 1) - log r_t (sampled only)
    kl_ref_sem: float | None  # standard error of kl_ref over completions (sampled only)
    kl_ref_tokenwise_sem: float | None  # standard error of kl_ref_tokenwise
    tokens: float  # mean completion length in tokens
    seconds: float
    samples: tuple[tuple[str, str, float], ...]  # the first SAMPLE_ROWS (prompt, completion, reward)
    effective_n: float | None = None  # the N whose Best-of-N KL bound is kl_ref_tokenwise (bond.bon_frontier)
    bon_gap: float | None = None  # reward - the reference's Best-of-N curve at that KL (nan: beyond the curve)
    anchor_effective_n: float | None = None  # J-BOND: the anchor's, from KL(anchor || ref) tokenwise on its samples
    anchor_effective_n_predicted: float | None = None  # 2 ** (eta * step), the EMA's idealisation (nan: hard copies)
    distinct_1: float | None = None  # distinct token 1-grams / all of them, over the completions
    distinct_2: float | None = None  # the same for 2-grams within each completion
    reward_length_corr: float | None = None  # Pearson correlation of reward with length in tokens (nan: constant)
    gold_reward: float | None = None  # eval.gold_reward's mean over the completions (never trained on)
    proxy_minus_gold: float | None = None  # reward - gold_reward: a widening gap is the proxy being hacked

    def row(self) -> dict:
        """The eval.jsonl row (samples left out: they go to the trackers' tables; nan and inf written as null)."""
        row = {k: v for k, v in dataclasses.asdict(self).items() if k != "samples"}
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
