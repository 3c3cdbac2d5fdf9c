"""Evaluation during training: the policy's reward on held-out prompts (greedy and sampled) and KL(pi || ref).

KL(pi || ref) is estimated on the sampled completions as the mean over completions of
sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)], both computed by the learner (a collective under
ZeRO-3, which the system's `logprobs` verb runs on every rank). At sampling.temperature != 1 the samples
are not exactly from pi, so the estimate is of the tempered sampler's divergence, as in the training stats.

Evaluation never touches the training prompt cursor or the training random streams: its requests carry
their own seeds (an offset the training seeds never reach), the learner's forward is deterministic and
no-grad, so a run with evaluation trains exactly as one without.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bond.records import Prompt, Role
from cluster.job_config import EvalConfig, JobConfig
from cluster.prompts import load_prompts

_SEED_OFFSET = 1 << 40  # training request seeds are run.seed * 1_000_003 + step: far below this
SAMPLE_ROWS = 8  # (prompt, completion, reward) rows kept per mode for the trackers' sample tables


@dataclass(frozen=True)
class EvalResult:
    step: int  # learner steps done when evaluated (0: before training)
    mode: str  # "greedy" | "sampled"
    prompts: int  # held-out prompts used
    completions: int
    reward: float  # mean over completions
    reward_std: float
    kl_ref: float | None  # nats per completion (sampled only)
    tokens: float  # mean completion length in tokens
    seconds: float
    samples: tuple[tuple[str, str, float], ...]  # the first SAMPLE_ROWS (prompt, completion, reward)

    def row(self) -> dict:
        """The eval.jsonl row (samples left out: they go to the trackers' tables)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "samples"}


@dataclass(frozen=True)
class PromptSplit:
    train: tuple[Prompt, ...]
    heldout: tuple[Prompt, ...]
    overlap: int  # held-out prompts (from a file) that also appear among the training prompts


def split_prompts(prompts: Sequence[Prompt], cfg: EvalConfig, seed: int) -> PromptSplit:
    """Training prompts and the held-out set: a file (cfg.prompts), or a seeded fraction of the distinct prompts."""
    prompts = tuple(prompts)
    if cfg.prompts is not None:
        try:
            heldout = load_prompts(cfg.prompts).prompts
        except (ValueError, FileNotFoundError) as e:  # its messages name prompts.*: this is eval.prompts.*
            raise type(e)(f"eval.{e}") from None
        train = set(prompts)
        return PromptSplit(prompts, heldout, sum(p in train for p in heldout))
    if cfg.holdout_fraction == 0.0:
        return PromptSplit(prompts, (), 0)
    distinct = sorted(set(prompts), key=lambda p: (p.text, [(m.role, m.content) for m in p.messages]))
    k = max(1, round(cfg.holdout_fraction * len(distinct)))
    if k >= len(distinct):
        raise ValueError(f"eval.holdout_fraction: holding out {k} of {len(distinct)} distinct prompts leaves none "
                         "to train on; lower it or give eval.prompts")
    held = set(random.Random(seed).sample(distinct, k))
    return PromptSplit(tuple(p for p in prompts if p not in held), tuple(p for p in distinct if p in held), 0)


def evaluate(system, job: JobConfig, heldout: Sequence[str], step: int) -> list[EvalResult]:
    """One evaluation of the policy the actors hold now (after the sync of `step`), one result per mode."""
    cfg, prompts = job.eval, list(heldout[: job.eval.num_prompts])
    seed = _SEED_OFFSET + job.run.seed * 1_000_003 + step
    modes = [m for m, on in (("greedy", cfg.greedy), ("sampled", cfg.sampled)) if on]
    results = []
    for mode in modes:
        t0 = time.perf_counter()
        greedy = mode == "greedy"
        settings = dataclasses.replace(job.sampling, temperature=0.0 if greedy else job.sampling.temperature,
                                       seed=seed)
        completions = system.sample(Role.POLICY, prompts, 1 if greedy else cfg.samples_per_prompt, settings)
        scored = system.score(completions)
        rewards = [s.reward for s in scored]
        kl = None
        if not greedy:
            log_pi = system.logprobs(completions, Role.POLICY)
            log_ref = system.logprobs(completions, Role.REFERENCE)
            kl = sum(a - b for a, b in zip(log_pi, log_ref, strict=True)) / len(completions)
        results.append(EvalResult(
            step=step, mode=mode, prompts=len(prompts), completions=len(completions),
            reward=statistics.fmean(rewards), reward_std=statistics.pstdev(rewards), kl_ref=kl,
            tokens=statistics.fmean(len(c.token_ids) for c in completions), seconds=time.perf_counter() - t0,
            samples=tuple((s.completion.prompt_text, s.completion.text.strip(), s.reward)
                          for s in scored[:SAMPLE_ROWS])))
    return results


def due(step: int, cfg: EvalConfig, last_step: int) -> bool:
    """Before the first step, every eval.every_steps, and after the last."""
    return cfg.every_steps > 0 and (step % cfg.every_steps == 0 or step == last_step)
