"""Every seed the system derives from run.seed, in one place: a function of (run.seed, step, role, actor) alone,
so a resumed run draws exactly what the uninterrupted one drew, and no two streams coincide.

- a training step's sampling requests: step_seed (the actors key each request by prompt id and sample index:
  SamplingSettings.sample_seed);
- each role's own stream within a request: role_settings (policy, anchor and reference weights are equal at
  step 0, so a shared stream would draw the same samples);
- evaluation and the Best-of-N curve: an offset the training seeds never reach, so a run with evaluation trains
  exactly as one without;
- each sampling actor's engine seed: actor_seed.
"""

from __future__ import annotations

import dataclasses

from actors.sampling import SamplingSettings
from bond.records import Role

ROLE_STREAM = {Role.POLICY: 0, Role.ANCHOR: 1, Role.REFERENCE: 2}  # each role's own random streams
EVAL_OFFSET = 1 << 40  # training steps' seeds stay far below this


def step_seed(run_seed: int, step: int) -> int:
    """The sampling seed of training step `step` (and of the ReST round starting at it)."""
    return run_seed * 1_000_003 + step


def eval_seed(run_seed: int, step: int) -> int:
    """The sampling seed of the evaluation after `step`."""
    return EVAL_OFFSET + step_seed(run_seed, step)


def bon_curve_seed(seed: int) -> int:
    """The sampling seed of the reference's Best-of-N curve."""
    return EVAL_OFFSET // 2 + step_seed(seed, 0)


def role_settings(settings: SamplingSettings, role: Role) -> SamplingSettings:
    """`role`'s own stream of a request's seed; within a role, SamplingSettings.sample_seed keys each request by
    prompt id, so its actors never share one either."""
    if settings.seed is None:
        return settings
    return dataclasses.replace(settings, seed=len(ROLE_STREAM) * settings.seed + ROLE_STREAM[role])


def actor_seed(run_seed: int, role: Role, actor: int) -> int:
    """The engine seed of actor `actor` of `role`."""
    return run_seed + 1000 * actor + 250 * ROLE_STREAM[role]
