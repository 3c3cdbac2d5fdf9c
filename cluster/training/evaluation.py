"""Evaluation during training: the policy's reward on held-out prompts (greedy and sampled) and KL(pi || ref),
and the Best-of-N curve of the reference that every trained policy is compared with: drawn once per run, each
sampled evaluation reports its effective N and Best-of-N gap (bond.bon_frontier) and, for J-BOND, the anchor's
effective N (from the anchor actors' samples), beside reward-hacking monitors (completion length, distinct-1/2
over token ids, the reward-length correlation) and, with eval.gold_reward, a second reward the policy never
trains on (cluster/outputs/hacking.py reads them).

KL(pi || ref) is estimated on the sampled completions as the mean over completions of
sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)] (`kl_ref`: k1, the estimator of every method's
training stats), and beside it the lower-variance `kl_ref_tokenwise` (the exact per-token KL of both
models' next-token distributions at the sampled prefixes) and `kl_ref_k3` (bond.divergence says why each
is unbiased). All come from the learner (a collective under ZeRO-3, which the system's `kl_to_reference`
verb runs on every rank). At sampling.temperature != 1 the samples are not exactly from pi, so the
estimate is of the tempered sampler's divergence, as in the training stats.

Evaluation never touches the training prompt cursor or the training random streams: its requests carry
their own seeds (an offset the training seeds never reach), the learner's forward is deterministic and
no-grad, so a run with evaluation trains exactly as one without.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actors.sampling import SamplingSettings
from bond.bon import kl_bound
from bond.bon_frontier import bon_gap, effective_n
from bond.config import Algorithm
from bond.divergence import expected_max_of_n
from bond.records import Prompt, Role
from cluster.config.job import EvalConfig, JobConfig
from cluster.config.prompts import PromptSet, load_prompts
from cluster.core import EvalResult
from cluster.outputs.report import BON_CURVE_FILE
from cluster.runtime.components import reward_prompts
from cluster.training.seeds import bon_curve_seed, eval_seed
from reward_service.spec import RewardSpec, build_reward_model

SAMPLE_ROWS = 8  # (prompt, completion, reward) rows kept per mode for the trackers' sample tables


@dataclass(frozen=True)
class PromptSplit:
    train: tuple[Prompt, ...]
    heldout: tuple[Prompt, ...]
    overlap: int  # held-out prompts (from a file) that also appear among the training prompts
    skipped: dict[str, int] = field(default_factory=dict)  # held-out rows (from a file) skipped, by reason


def split_prompts(
    prompts: Sequence[Prompt], cfg: EvalConfig, seed: int, fit: Callable[[PromptSet], PromptSet] = lambda loaded: loaded
) -> PromptSplit:
    """Training prompts and the held-out set: a file (cfg.prompts), or a seeded fraction of the distinct prompts.
    `fit` filters a held-out file as the training prompts were (preflight.fit_prompts: what the policy can take);
    the training prompts passed in are already fitted."""
    prompts = tuple(prompts)
    if cfg.prompts is not None:
        try:
            loaded = fit(load_prompts(cfg.prompts))
        except (ValueError, FileNotFoundError) as e:  # its messages name prompts.*: this is eval.prompts.*
            raise type(e)(f"eval.{e}") from None
        train = set(prompts)
        return PromptSplit(prompts, loaded.prompts, sum(p in train for p in loaded.prompts), dict(loaded.skipped))
    if cfg.holdout_fraction == 0.0:
        return PromptSplit(prompts, (), 0)
    distinct = sorted(set(prompts), key=lambda p: (p.text, [(m.role, m.content) for m in p.messages]))
    k = max(1, round(cfg.holdout_fraction * len(distinct)))
    if k >= len(distinct):
        raise ValueError(
            f"eval.holdout_fraction: holding out {k} of {len(distinct)} distinct prompts leaves none "
            "to train on; lower it or give eval.prompts"
        )
    held = set(random.Random(seed).sample(distinct, k))
    return PromptSplit(tuple(p for p in prompts if p not in held), tuple(p for p in distinct if p in held), 0)


def evaluate(
    system, job: JobConfig, heldout: Sequence[str], step: int, run_dir: Path | None = None
) -> list[EvalResult]:
    """One evaluation of the policy the actors hold now (after the sync of `step`), one result per mode; with a
    run dir, sampled results are placed against the reference's Best-of-N curve (`reference_curve`)."""
    cfg, prompts = job.eval, list(heldout[: job.eval.num_prompts])
    seed = eval_seed(job.run.seed, step)
    curve = reference_curve(system, job, heldout, run_dir, step)
    modes = [m for m, on in (("greedy", cfg.greedy), ("sampled", cfg.sampled)) if on]
    results = []
    for mode in modes:
        t0 = time.perf_counter()
        greedy = mode == "greedy"
        settings = dataclasses.replace(job.sampling, temperature=0.0 if greedy else job.sampling.temperature, seed=seed)
        completions = system.samplers.sample(Role.POLICY, prompts, 1 if greedy else cfg.samples_per_prompt, settings)
        scored = system.scorer.score(completions)
        rewards = [s.reward for s in scored]
        kl = dict.fromkeys(("kl_ref", "kl_ref_tokenwise", "kl_ref_k3", "kl_ref_sem", "kl_ref_tokenwise_sem"))
        frontier = {}
        if not greedy:
            kl = _kl_fields(system.learner.kl_to_reference(completions))
            frontier = _frontier(statistics.fmean(rewards), kl["kl_ref_tokenwise"], curve)
            frontier |= _anchor_n(system, job, prompts, settings, step)
        lengths = [len(c.token_ids) for c in completions]
        results.append(
            EvalResult(
                step=step,
                mode=mode,
                prompts=len(prompts),
                completions=len(completions),
                reward=statistics.fmean(rewards),
                reward_std=statistics.pstdev(rewards),
                **kl,
                tokens=statistics.fmean(lengths),
                seconds=time.perf_counter() - t0,
                samples=tuple(
                    (s.completion.prompt_text, s.completion.text.strip(), s.reward) for s in scored[:SAMPLE_ROWS]
                ),
                **frontier,
                distinct_1=distinct_n([c.token_ids for c in completions], 1),
                distinct_2=distinct_n([c.token_ids for c in completions], 2),
                reward_length_corr=correlation(rewards, lengths),
                **_gold(cfg.gold_reward, completions, rewards),
            )
        )
    return results


def _kl_fields(est) -> dict[str, float]:
    return {
        "kl_ref": est.sampled.mean().item(),
        "kl_ref_tokenwise": est.tokenwise.mean().item(),
        "kl_ref_k3": est.k3.mean().item(),
        "kl_ref_sem": _sem(est.sampled.tolist()),
        "kl_ref_tokenwise_sem": _sem(est.tokenwise.tolist()),
    }


def _gold(spec: RewardSpec | None, completions: Sequence, rewards: Sequence[float]) -> dict[str, float]:
    """The gold reward's mean over the completions and the trained-on reward's lead over it (none without one)."""
    if spec is None:
        return {}
    gold = statistics.fmean(_gold_model(spec).score(reward_prompts(completions), [c.text for c in completions]))
    return {"gold_reward": gold, "proxy_minus_gold": statistics.fmean(rewards) - gold}


@functools.cache  # built once per run in the driver: evaluation samples are few, no service needed
def _gold_model(spec: RewardSpec):
    return build_reward_model(spec)


def _frontier(reward: float, kl: float, curve: Sequence[BonPoint] | None) -> dict[str, float]:
    """Effective N of the policy's KL (the lower-variance tokenwise estimate) and, with a curve, its Best-of-N gap."""
    gap = bon_gap(reward, kl, [p.kl_ref for p in curve], [p.reward for p in curve]) if curve else None
    return {"effective_n": effective_n(kl), "bon_gap": gap}


def _anchor_n(
    system, job: JobConfig, prompts: Sequence[Prompt], settings: SamplingSettings, step: int
) -> dict[str, float]:
    """J-BOND: the anchor's effective N (its actors' samples on the evaluation's seeds, the tokenwise KL), beside
    the EMA schedule's idealised 2 ** (eta * step) (docs/algorithm.md section 9); a hard copy
    (algorithm.anchor_copy_every) jumps instead of walking, so it has no such prediction."""
    algo = job.algorithm
    if algo.algorithm is not Algorithm.JBOND:
        return {}
    completions = system.samplers.sample(Role.ANCHOR, prompts, job.eval.samples_per_prompt, settings)
    kl = system.learner.kl_to_reference(completions, Role.ANCHOR).tokenwise.mean().item()
    predicted = math.nan if algo.anchor_copy_every else 2.0 ** (algo.eta * step)
    return {"anchor_effective_n": effective_n(kl), "anchor_effective_n_predicted": predicted}


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over the sequences (n-grams within each sequence; nan when there are none):
    a policy that collapses onto a few phrases, a common reward hack, drives it down."""
    grams = [tuple(seq[i : i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation (nan when either side is constant): reward rising with length hints at a length hack."""
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:
        return math.nan


def _sem(values: Sequence[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


@dataclass(frozen=True)
class BonPoint:
    n: int
    kl_ref: float  # log n - (n - 1) / n: KL(pi_BoN || ref) for a continuous reward, an upper bound with ties
    reward: float  # E[max of n rewards], averaged over prompts (unbiased per prompt: bond.divergence)
    reward_sem: float  # standard error over prompts


def bon_curve(
    system,
    job: JobConfig,
    heldout: Sequence[str],
    role: Role,
    max_n: int = 64,
    samples_per_prompt: int = 128,
    seed: int = 0,
) -> list[BonPoint]:
    """The Best-of-N curve on the held-out prompts: reward of BoN sampling vs its KL, for n = 1 .. max_n.

    `role`'s actors must hold the reference weights (e.g. the policy actors before the first update).
    samples_per_prompt (M >= max_n) draws per prompt; every n uses all of them through the U-statistic
    E[max of n] estimate, far less noisy than drawing n samples once per prompt.
    """
    if samples_per_prompt < max_n:
        raise ValueError(f"bon_curve: samples_per_prompt ({samples_per_prompt}) must be >= max_n ({max_n})")
    prompts = list(heldout[: job.eval.num_prompts])
    settings = dataclasses.replace(job.sampling, seed=bon_curve_seed(seed))
    completions = system.samplers.sample(role, prompts, samples_per_prompt, settings)  # consecutive per prompt
    rewards = torch.tensor([s.reward for s in system.scorer.score(completions)]).view(len(prompts), samples_per_prompt)
    points = []
    for n in range(1, max_n + 1):
        per_prompt = expected_max_of_n(rewards, n).tolist()
        points.append(
            BonPoint(n=n, kl_ref=kl_bound(n), reward=statistics.fmean(per_prompt), reward_sem=_sem(per_prompt))
        )
    return points


def reference_curve(system, job: JobConfig, heldout: Sequence[str], run_dir: Path | None, step: int):
    """The reference's Best-of-N curve (eval.bon_samples per prompt, N up to half of them), drawn at the
    evaluation before the first update (the policy actors hold the reference then) into the run dir, and read
    back at the later ones and after a resume. None when off, without a run dir, or when a resumed run's dir has
    none (its policy actors no longer hold the reference)."""
    m = job.eval.bon_samples
    if m == 0 or not job.eval.sampled or run_dir is None:
        return None
    path = Path(run_dir) / BON_CURVE_FILE
    if step > 0:
        return [BonPoint(**p) for p in json.loads(path.read_text())] if path.exists() else None
    points = bon_curve(system, job, heldout, Role.POLICY, max_n=m // 2, samples_per_prompt=m, seed=job.run.seed)
    path.write_text(json.dumps([dataclasses.asdict(p) for p in points], indent=1) + "\n")
    return points


def due(step: int, cfg: EvalConfig, last_step: int) -> bool:
    """Before the first step, every eval.every_steps, and after the last."""
    return cfg.every_steps > 0 and (step % cfg.every_steps == 0 or step == last_step)
