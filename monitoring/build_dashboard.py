"""Writes grafana/dashboards/jbond.json: `python -m monitoring.build_dashboard` (a test checks it is current).

Why generate: Grafana's JSON repeats ids, grid positions and datasource blocks for every panel; here each
panel is one line of PromQL, next to the metric it reads. Metric names come from cluster/outputs/metrics.py (job,
tag `run`) and reward_service/serve_app.py (reward service, tags `app`, `reward_model`); Ray adds the `ray_`
prefix and, for counters, the `_total` suffix. Series carry Ray's own labels (WorkerId, SessionName, ...),
so every query aggregates down to the labels a reader cares about.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "jbond.json"
# The data source that grafana/provisioning/datasources/prometheus.yaml provisions. Panels go through the
# DS_PROMETHEUS variable, preset to it: a provisioned Grafana shows data with no clicks, and an imported copy
# can still be pointed at any other Prometheus from the drop-down.
PROVISIONED_DATASOURCE = {"name": "Prometheus", "uid": "jbond-prometheus"}
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
RUN = '{run=~"$run"}'
APP = '{app=~"$reward_app"}'  # the reward service's own metrics
SERVE = '{application=~"$reward_app"}'  # Ray Serve's built-in metrics name the same thing `application`
SAMPLED = '{run=~"$run", mode="sampled"}'  # the evaluation's sampled completions (KL and hacking monitors)
RATE = "[$__rate_interval]"
# Ray drops a gauge from its endpoint two report intervals (default 2 x 10 s) after its last set(), even while
# the process lives; a J-BOND step can take longer, so raw gauges would show gaps between steps. Holding the
# last value for 5 minutes restores Prometheus's usual lookback for gauges.
HOLD = "[5m]"


def held(metric: str, selector: str = RUN) -> str:
    return f"last_over_time({metric}{selector}{HOLD})"


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""


def or_since_start(windowed: str, since_start: str) -> str:
    """The windowed value, else (a NaN: no observation in the window) the value since the process started.

    A run shorter than the rate window, or whose few observations reached Ray's endpoint in one report, has
    buckets that never grow inside a window: rate() is 0 and quantiles and means are 0/0 = NaN. `> -Inf`
    drops NaN samples (every comparison with NaN is false), and `or` fills them with the cumulative value."""
    return f"{windowed} > -Inf or {since_start}"


def quantiles(metric: str, by: str, selector: str, qs=(0.5, 0.95)) -> tuple[tuple[str, str], ...]:
    """p50/p95 of a Ray histogram: rate of the buckets, summed over Ray's per-worker labels, keeping `le`."""
    return tuple(
        (
            or_since_start(
                f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{selector}{RATE})))",
                f"histogram_quantile({q}, sum by (le, {by}) ({metric}_bucket{selector}))",
            ),
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in qs
    )


def mean_of(metric: str, by: str, selector: str) -> str:
    """Mean observation of a histogram over the rate window: rate(sum) / rate(count)."""
    return or_since_start(
        f"sum by ({by}) (rate({metric}_sum{selector}{RATE})) / sum by ({by}) (rate({metric}_count{selector}{RATE}))",
        f"sum by ({by}) ({metric}_sum{selector}) / sum by ({by}) ({metric}_count{selector})",
    )


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Objective",
        (
            Panel(
                "Reward (mean of the step's samples)",
                (
                    (f"avg by (run) ({held('ray_jbond_reward_policy')})", "{{run}} policy"),
                    (f"avg by (run) ({held('ray_jbond_reward_anchor')})", "{{run}} anchor"),
                ),
            ),
            Panel(
                "Policy reward quantiles",
                ((f"avg by (run, quantile) ({held('ray_jbond_reward_policy_quantile')})", "{{run}} q{{quantile}}"),),
                description="Quantiles 0.1 / 0.5 / 0.9 of the rewards of the step's policy samples.",
            ),
            Panel(
                "KL(π ‖ reference)",
                ((f"avg by (run) ({held('ray_jbond_kl_ref')})", "{{run}}"),),
                "none",
                "Mean log π(y) − log π_ref(y) on policy samples, nats. Should stay bounded.",
            ),
            Panel(
                "KL(π ‖ anchor)",
                ((f"avg by (run) ({held('ray_jbond_kl_anchor')})", "{{run}}"),),
                "none",
                "Mean log π(y) − log π_anchor(y) on policy samples, nats.",
            ),
            Panel(
                "J-BOND loss terms",
                (
                    (f"avg by (run) ({held('ray_jbond_loss')})", "{{run}} loss"),
                    (f"avg by (run) ({held('ray_jbond_loss_fw')})", "{{run}} forward KL (SFT on best anchor)"),
                    (f"avg by (run) ({held('ray_jbond_loss_bw')})", "{{run}} backward KL (policy gradient)"),
                    (f"avg by (run) ({held('ray_jbond_loss_reg')})", "{{run}} KL(π‖anchor) regulariser"),
                ),
                description="loss = (1 − β)·forward + β·backward + γ·regulariser",
            ),
            Panel(
                "Fraction of policy samples penalised",
                ((f"avg by (run) ({held('ray_jbond_frac_penalised')})", "{{run}}"),),
                "percentunit",
                "Policy samples whose J-BOND reward is −log 16 (worse than both anchor samples).",
            ),
            Panel("Gradient norm (before clipping)", ((f"avg by (run) ({held('ray_jbond_grad_norm')})", "{{run}}"),)),
            Panel("Learning rate", ((f"avg by (run) ({held('ray_jbond_lr')})", "{{run}}"),)),
        ),
    ),
    (
        "Against Best-of-N, and reward hacking (at each evaluation)",
        (
            Panel("Held-out reward", ((f"avg by (run, mode) ({held('ray_jbond_eval_reward')})", "{{run}} {{mode}}"),)),
            Panel(
                "Effective N",
                ((f"avg by (run) ({held('ray_jbond_eval_effective_n', SAMPLED)})", "{{run}}"),),
                description="The N whose Best-of-N KL bound log N − (N−1)/N is the policy's KL(π ‖ ref).",
            ),
            Panel(
                "Best-of-N gap",
                ((f"avg by (run) ({held('ray_jbond_eval_bon_gap', SAMPLED)})", "{{run}}"),),
                description="Held-out reward minus the reference's Best-of-N curve at the policy's KL (alert "
                "JBondBelowBestOfN). Missing beyond the curve's last N.",
            ),
            Panel(
                "Completion length (tokens) and distinct-n",
                (
                    (f"avg by (run, mode) ({held('ray_jbond_eval_tokens')})", "{{run}} {{mode}} tokens"),
                    (f"avg by (run) ({held('ray_jbond_eval_distinct_1', SAMPLED)})", "{{run}} distinct-1"),
                    (f"avg by (run) ({held('ray_jbond_eval_distinct_2', SAMPLED)})", "{{run}} distinct-2"),
                ),
                description="Length growing and distinct-n falling are the usual shapes of a reward hack.",
            ),
            Panel(
                "corr(reward, length)",
                ((f"avg by (run) ({held('ray_jbond_eval_reward_length_corr', SAMPLED)})", "{{run}}"),),
                "none",
                "Pearson correlation of reward with completion length inside one evaluation.",
            ),
            Panel(
                "Gold reward (eval.gold_reward)",
                (
                    (f"avg by (run) ({held('ray_jbond_eval_gold_reward', SAMPLED)})", "{{run}} gold"),
                    (f"avg by (run) ({held('ray_jbond_eval_proxy_minus_gold', SAMPLED)})", "{{run}} proxy − gold"),
                ),
                description="A reward never trained on; gold falling while the proxy rises is a hack (alert "
                "JBondGoldFallingWhileProxyRises). Empty without eval.gold_reward.",
            ),
        ),
    ),
    (
        "Speed",
        (
            Panel(
                "Loop phase seconds, p50 / p95",
                quantiles("ray_jbond_phase_seconds", "phase", RUN),
                "s",
                "sample / score / learn / sync wall-clock per step, from the jbond_phase_seconds histogram; "
                "over the whole run where the rate window saw no step.",
            ),
            Panel("Mean seconds per phase", ((mean_of("ray_jbond_phase_seconds", "phase", RUN), "{{phase}}"),), "s"),
            Panel(
                "Learner steps per minute",
                (
                    (
                        f'60 * sum by (run) (rate(ray_jbond_phase_seconds_count{{run=~"$run", phase="learn"}}{RATE}))',
                        "{{run}}",
                    ),
                ),
            ),
            Panel(
                "Actor tokens/s by role",
                ((f"sum by (run, role) ({held('ray_jbond_actor_tokens_per_second')})", "{{run}} {{role}}"),),
                description="Completion tokens per second of sampling, per actor group (policy, anchor).",
            ),
        ),
    ),
    (
        "Weights",
        (
            Panel(
                "Weight sync seconds",
                ((f"avg by (run, role) ({held('ray_jbond_weight_sync_seconds')})", "{{run}} {{role}}"),),
                "s",
            ),
            Panel(
                "Weight sync bytes/s",
                ((f"sum by (run, role) (rate(ray_jbond_weight_sync_bytes_total{RUN}{RATE}))", "{{run}} {{role}}"),),
                "Bps",
            ),
            Panel(
                "Versions",
                (
                    (f"max by (run) ({held('ray_jbond_policy_version')})", "{{run}} policy"),
                    (f"max by (run) ({held('ray_jbond_anchor_version')})", "{{run}} anchor"),
                    (f"max by (run) ({held('ray_jbond_step')})", "{{run}} learner step"),
                ),
            ),
            Panel(
                "Sample staleness (versions behind)",
                (
                    (f"max by (run, role) ({held('ray_jbond_sample_staleness')})", "{{run}} {{role}}"),
                    (f"max by (run) ({held('ray_jbond_max_staleness')})", "{{run}} bound (run.max_staleness)"),
                ),
                description="Learner version minus the version that drew the samples: 0 in sync mode, at most "
                "run.max_staleness pipelined (an alert fires above it).",
            ),
        ),
    ),
    (
        "Health",
        (
            Panel(
                "Skipped samples (total, by reason)",
                ((f"sum by (run, reason) (ray_jbond_skipped_samples_total{RUN})", "{{run}} {{reason}}"),),
                description="Stale samples redrawn, bad prompt rows, ... No data = nothing skipped.",
            ),
            Panel(
                "Errors (total, by component and reason)",
                (
                    (
                        f"sum by (run, component, reason) (ray_jbond_errors_total{RUN})",
                        "{{run}} {{component}}: {{reason}}",
                    ),
                ),
                description="No data = no error recorded.",
            ),
            Panel(
                "Queue depth",
                ((f"max by (run) ({held('ray_jbond_queue_depth')})", "{{run}}"),),
                description="Sampling batches in flight ahead of the learner.",
            ),
        ),
    ),
    (
        "Reward service",
        (
            Panel(
                "Reward request latency, p50 / p95",
                quantiles("ray_reward_request_latency_s", "app", APP),
                "s",
                "From a scoring request's arrival at a replica to its reply (batching wait included).",
            ),
            Panel(
                "Samples per reward-model call",
                (
                    (mean_of("ray_reward_batch_samples", "app", APP), "{{app}} mean"),
                    *quantiles("ray_reward_batch_samples", "app", APP, qs=(0.95,)),
                ),
                description="Dynamic batching: samples of all merged requests scored in one forward pass.",
            ),
            Panel(
                "Requests merged per reward-model call",
                ((mean_of("ray_reward_batch_requests", "app", APP), "{{app}} mean"),),
            ),
            Panel(
                "Reward errors (total, by reason)",
                ((f"sum by (app, reason) (ray_reward_errors_total{APP})", "{{app}} {{reason}}"),),
                description="bad_request / model_error / timeout. No data = no failed request.",
            ),
            Panel(
                "Serve: requests/s",
                (
                    (
                        f"sum by (application, deployment) "
                        f"(rate(ray_serve_deployment_request_counter_total{SERVE}{RATE}))",
                        "{{application}} {{deployment}}",
                    ),
                ),
                "reqps",
            ),
            Panel(
                "Serve: replica processing latency, p50 / p95",
                quantiles("ray_serve_deployment_processing_latency_ms", "deployment", SERVE),
                "ms",
            ),
            Panel(
                "Serve: healthy replicas",
                (
                    (
                        f"sum by (application, deployment) (ray_serve_deployment_replica_healthy{SERVE})",
                        "{{application}} {{deployment}}",
                    ),
                ),
            ),
        ),
    ),
)

VARIABLES = [
    {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": True, "text": PROVISIONED_DATASOURCE["name"], "value": PROVISIONED_DATASOURCE["uid"]},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    },
    {
        "name": "run",
        "label": "run",
        "type": "query",
        "datasource": DATASOURCE,
        "definition": "label_values(ray_jbond_step, run)",
        "query": {"query": "label_values(ray_jbond_step, run)", "refId": "run"},
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {},
        "refresh": 2,
        "sort": 1,
        "options": [],
    },
    {
        "name": "reward_app",
        "label": "reward app",
        "type": "query",
        "datasource": DATASOURCE,
        "definition": "label_values(ray_reward_batch_samples_count, app)",
        "query": {"query": "label_values(ray_reward_batch_samples_count, app)", "refId": "reward_app"},
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {},
        "refresh": 2,
        "sort": 1,
        "options": [],
    },
]


def timeseries(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "custom": {"lineWidth": 1, "fillOpacity": 0, "showPoints": "auto"}},
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
        "targets": [
            {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "range": True, "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def dashboard() -> dict:
    panels, panel_id, y = [], 1, 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y = panel_id + 1, y + 1
        for i, panel in enumerate(row_panels):
            panels.append(timeseries(panel, panel_id, x=8 * (i % 3), y=y + 8 * (i // 3)))
            panel_id += 1
        y += 8 * ((len(row_panels) + 2) // 3)
    return {
        "title": "J-BOND",
        "uid": "jbond-training",
        "tags": ["jbond", "ray"],
        "editable": True,
        "description": "J-BOND training on Ray: objective, speed, weight sync, health, reward service. "
        "Metrics from cluster/outputs/metrics.py and reward_service/serve_app.py.",
        "schemaVersion": 39,
        "version": 1,
        "graphTooltip": 1,
        "refresh": "10s",
        "timezone": "",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "templating": {"list": VARIABLES},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
