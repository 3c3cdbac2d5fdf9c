"""What one training step samples for each algorithm (docs/algorithm.md sections 2-4): how many completions per
prompt, from which weights. The loop, the systems and the learner all read a step's shape from here.

    jbond      1 policy sample + n = 2 anchor samples           (Algorithm 2)
    bond       1 policy sample + k_quantile reference samples   (BOND-N: quantiles and Best-of-n of pi_ref)
    bond, iterated: the same against the anchor instead          (Best-of-n of a moving anchor: Bo-n^M)
    reinforce  rloo_k policy samples                            (RLOO: each baselined by the prompt's others)
    gkd        1 policy sample                                  (on-policy: the teacher scores it, no target)
    rest       1 policy sample per batch row                    (the SFT batch; Grow draws its own: training/rest.py)
"""

from __future__ import annotations

from dataclasses import dataclass

from bond.config import Algorithm, BondConfig
from bond.records import Role


@dataclass(frozen=True)
class SamplingPlan:
    policy: int  # samples of pi per prompt
    target_role: Role | None  # whose samples the loss compares pi's with: ANCHOR, REFERENCE, or None
    target: int  # samples of target_role per prompt (0 without one)

    def __post_init__(self) -> None:
        if self.policy < 1 or (self.target_role is None) != (self.target == 0) or self.target_role is Role.POLICY:
            raise ValueError(f"SamplingPlan: inconsistent {self}")

    @property
    def draws(self) -> tuple[tuple[Role, int], ...]:
        """(role, samples per prompt) for every role sampled in a step, policy first."""
        target = ((self.target_role, self.target),) if self.target_role is not None else ()
        return ((Role.POLICY, self.policy), *target)

    @property
    def roles(self) -> tuple[Role, ...]:
        return tuple(role for role, _ in self.draws)

    @property
    def pushed(self) -> tuple[Role, ...]:
        """Sampled roles whose weights the learner changes (pushed to their actors after a step); the reference
        is frozen and never pushed to."""
        return tuple(role for role in self.roles if role is not Role.REFERENCE)

    @property
    def samples_per_prompt(self) -> int:
        return self.policy + self.target


def sampling_plan(cfg: BondConfig) -> SamplingPlan:
    if cfg.algorithm is Algorithm.JBOND:
        return SamplingPlan(policy=1, target_role=Role.ANCHOR, target=cfg.n)
    if cfg.algorithm is Algorithm.BOND:
        return SamplingPlan(
            policy=1, target_role=Role.ANCHOR if cfg.iterated else Role.REFERENCE, target=cfg.k_quantile
        )
    if cfg.algorithm is Algorithm.REINFORCE:
        return SamplingPlan(policy=cfg.rloo_k, target_role=None, target=0)
    if cfg.algorithm in (Algorithm.GKD, Algorithm.REST):
        return SamplingPlan(policy=1, target_role=None, target=0)
    raise ValueError(f"sampling_plan: no plan for algorithm {cfg.algorithm.value}")
