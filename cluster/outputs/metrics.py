"""The job's Prometheus metrics, through ray.util.metrics (exported by every Ray node's metrics endpoint).

Ray prefixes each name with `ray_` on the Prometheus side: `jbond_reward_policy` is scraped as
`ray_jbond_reward_policy`. Tag `run` tells runs apart on one cluster. monitoring/ holds a Grafana
dashboard whose every query is tested against a real Prometheus scraping a real run.
"""

from __future__ import annotations

import math
from dataclasses import fields

from ray.util.metrics import Counter, Gauge, Histogram

from bond.records import StepStats
from cluster.core import EvalResult

# StepStats field -> gauge name (all per-step values, nats where applicable)
_STEP_GAUGES = {
    "reward_policy": "jbond_reward_policy",
    "reward_anchor": "jbond_reward_anchor",
    "kl_ref": "jbond_kl_ref",
    "kl_anchor": "jbond_kl_anchor",
    "loss": "jbond_loss",
    "loss_fw": "jbond_loss_fw",
    "loss_bw": "jbond_loss_bw",
    "loss_reg": "jbond_loss_reg",
    "frac_penalised": "jbond_frac_penalised",
    "grad_norm": "jbond_grad_norm",
    "lr": "jbond_lr",
    "policy_version": "jbond_policy_version",
    "anchor_version": "jbond_anchor_version",
    "step": "jbond_step",
}
assert set(_STEP_GAUGES) <= {f.name for f in fields(StepStats)}

# EvalResult field -> gauge name, tagged by mode (greedy | sampled): where the policy stands against the
# reference's Best-of-N curve, and the reward-hacking monitors (docs/monitoring.md)
_EVAL_GAUGES = {
    "reward": "jbond_eval_reward",
    "kl_ref_tokenwise": "jbond_eval_kl_ref",
    "effective_n": "jbond_eval_effective_n",
    "bon_gap": "jbond_eval_bon_gap",
    "anchor_effective_n": "jbond_eval_anchor_effective_n",
    "anchor_effective_n_predicted": "jbond_eval_anchor_effective_n_predicted",
    "tokens": "jbond_eval_tokens",
    "distinct_1": "jbond_eval_distinct_1",
    "distinct_2": "jbond_eval_distinct_2",
    "reward_length_corr": "jbond_eval_reward_length_corr",
    "gold_reward": "jbond_eval_gold_reward",
    "proxy_minus_gold": "jbond_eval_proxy_minus_gold",
}
assert set(_EVAL_GAUGES) <= {f.name for f in fields(EvalResult)}

STEP_SECONDS_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120]


class JobMetrics:
    """All the metrics of one run, created in the driver (the training loop's process)."""

    def __init__(self, run: str, max_staleness: int = 0):
        tags, by_role = ("run",), ("run", "role")
        self._tags = {"run": run}
        self._max_staleness = max_staleness
        self.step_gauges = {
            field: Gauge(name, description=f"StepStats.{field} of the latest learner step", tag_keys=tags)
            for field, name in _STEP_GAUGES.items()
        }
        self.eval_gauges = {
            field: Gauge(name, description=f"EvalResult.{field} of the latest evaluation", tag_keys=("run", "mode"))
            for field, name in _EVAL_GAUGES.items()
        }
        self._eval_values: dict[tuple[str, str], float] = {}  # (field, mode) -> the latest evaluation's value
        self.reward_quantile = Gauge(
            "jbond_reward_policy_quantile", "Quantiles of policy-sample rewards", tag_keys=("run", "quantile")
        )
        self.phase_seconds = Histogram(
            "jbond_phase_seconds",
            "Seconds per loop phase (sample/score/learn/sync)",
            boundaries=STEP_SECONDS_BOUNDARIES,
            tag_keys=("run", "phase"),
        )
        self.tokens_per_second = Gauge(
            "jbond_actor_tokens_per_second", "Completion tokens/s of each actor group", tag_keys=by_role
        )
        self.sync_seconds = Gauge("jbond_weight_sync_seconds", "Seconds of the latest weight push", tag_keys=by_role)
        self.sync_bytes = Counter("jbond_weight_sync_bytes", "Bytes of weights pushed to actors", tag_keys=by_role)
        self.staleness = Gauge(
            "jbond_sample_staleness", "Learner version minus the version that sampled", tag_keys=by_role
        )
        # The bound beside the value, so an alert rule can compare them per run (monitoring/alerts.yml).
        self.max_staleness = Gauge(
            "jbond_max_staleness", "run.max_staleness: the most versions a sample may lag", tag_keys=tags
        )
        self.skipped = Counter("jbond_skipped_samples", "Samples dropped, by reason", tag_keys=("run", "reason"))
        self.errors = Counter(
            "jbond_errors", "Errors, by component and reason", tag_keys=("run", "component", "reason")
        )
        self.queue_depth = Gauge("jbond_queue_depth", "Sampling batches in flight ahead of the learner", tag_keys=tags)
        # ray_jbond_actor_restarts_total on the Prometheus side (an alert rule watches it)
        self.actor_restarts = Counter(
            "jbond_actor_restarts", "Sampler actors that died and were restarted", tag_keys=by_role
        )

    def record_step(self, stats: StepStats, policy_rewards: list[float]) -> None:
        for field, gauge in self.step_gauges.items():
            gauge.set(float(getattr(stats, field)), tags=self._tags)
        ordered = sorted(policy_rewards)
        for q in (0.1, 0.5, 0.9):
            value = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
            self.reward_quantile.set(value, tags={**self._tags, "quantile": str(q)})
        for (field, mode), value in self._eval_values.items():  # set again each step: Ray drops idle gauges
            self.eval_gauges[field].set(value, tags={**self._tags, "mode": mode})

    def record_eval(self, result: EvalResult) -> None:
        """The evaluation's values (a non-finite or missing one, e.g. the gap beyond the curve, is not exported)."""
        for field in self.eval_gauges:
            self._eval_values.pop((field, result.mode), None)
            value = getattr(result, field)
            if value is not None and math.isfinite(value):
                self._eval_values[field, result.mode] = value
                self.eval_gauges[field].set(value, tags={**self._tags, "mode": result.mode})

    def record_phase(self, phase: str, seconds: float) -> None:
        self.phase_seconds.observe(seconds, tags={**self._tags, "phase": phase})

    def record_tokens(self, role: str, tokens: int, seconds: float) -> None:
        self.tokens_per_second.set(tokens / max(seconds, 1e-9), tags={**self._tags, "role": role})

    def record_sync(self, role: str, seconds: float, num_bytes: int) -> None:
        self.sync_seconds.set(seconds, tags={**self._tags, "role": role})
        if num_bytes:  # 0 when the anchor followed the policy push (Ray's counters refuse a 0 increment)
            self.sync_bytes.inc(num_bytes, tags={**self._tags, "role": role})

    def record_staleness(self, role: str, versions_behind: float) -> None:
        self.staleness.set(versions_behind, tags={**self._tags, "role": role})
        self.max_staleness.set(self._max_staleness, tags=self._tags)  # set with it: Ray drops idle gauges

    def record_skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.skipped.inc(count, tags={**self._tags, "reason": reason})

    def record_error(self, component: str, reason: str) -> None:
        self.errors.inc(1, tags={**self._tags, "component": component, "reason": reason})

    def record_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth, tags=self._tags)

    def record_actor_restart(self, role: str) -> None:
        self.actor_restarts.inc(1, tags={**self._tags, "role": role})
