"""The Best-of-N inference baseline (ALGORITHM.md sections 1 and 4): no training, N samples of the frozen
reference per prompt, keep the one the reward model likes best. It is the reference point every trained
method's reward-vs-KL(pi || ref) is compared with: its KL is the closed form log N - (N-1)/N (exact for
continuous rewards, an upper bound with ties), so no log-probs are needed.

One draw of max(ns) samples per prompt serves the whole curve: the first N of them are an exact Best-of-N
draw for every N (bond.bon.best_of_first).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from actors.sampling import SamplingSettings
from bond.bon import best_of_first, kl_bound
from bond.records import Prompt, Role


@dataclass(frozen=True)
class BestOfNResult:
    n: int  # samples of the reference per prompt, the best kept
    prompts: int
    reward: float  # mean over prompts of the best reward
    reward_std: float  # population std over prompts
    kl_bound: float  # log n - (n-1)/n, nats: KL(pi_BoN || pi_ref) (an upper bound with tied rewards)
    seconds: float  # the whole curve's sampling and scoring, shared by every n of one call


def best_of_n_curve(system, prompts: Sequence[Prompt], ns: Sequence[int],
                    settings: SamplingSettings) -> list[BestOfNResult]:
    """Best-of-N of the reference for each N in ns, on the same max(ns) samples per prompt.

    `system` is a cluster.loop.System with reference actors: bond's jobs start them; for any other algorithm
    build it with roles=(*job.actor_roles, Role.REFERENCE). Settings: temperature 1 and top_p 1 sample the
    reference itself (the KL bound is of that distribution); give them a seed of their own.
    """
    if not prompts or not ns or min(ns) < 1:
        raise ValueError(f"best_of_n_curve: needs prompts and every N >= 1, got {len(prompts)} prompts, ns={ns}")
    t0, most = time.perf_counter(), max(ns)
    completions = system.sample(Role.REFERENCE, list(prompts), most, settings)  # a prompt's `most` consecutive
    rewards = torch.tensor([s.reward for s in system.score(completions)], dtype=torch.float64).view(len(prompts), most)
    seconds = time.perf_counter() - t0
    out = []
    for n in ns:
        best = best_of_first(rewards, n).tolist()
        out.append(BestOfNResult(n=n, prompts=len(prompts), reward=statistics.fmean(best),
                                 reward_std=statistics.pstdev(best), kl_bound=kl_bound(n), seconds=seconds))
    return out


def best_of_n(system, prompts: Sequence[Prompt], n: int, settings: SamplingSettings) -> BestOfNResult:
    """Best-of-n of the reference: mean best reward over the prompts and the KL bound (see best_of_n_curve)."""
    return best_of_n_curve(system, prompts, [n], settings)[0]
