"""Monitoring end to end, on one stack and one short job: the stack of `make monitor` (a real Ray head whose
dashboard is pointed at a real Prometheus through RAY_PROMETHEUS_HOST; that Prometheus scrapes the head through
the shipped prometheus.yml and loads the shipped alert rules), a real J-BOND job (`python -m cluster.main`,
submitted with `ray job submit`, a relative run.run_dir under run.storage_path), and then:
- every PromQL query of the Grafana dashboard answered with data from that run;
- the Ray dashboard reaches its Prometheus and lists, in its service discovery, the endpoint the project's
  series were scraped from; it answers and lists the job;
- the live Prometheus loaded every rule of alerts.yml (their promtool unit tests: tests/unit/test_alert_rules.py),
  evaluates each without error, and a healthy run fires none;
- the outputs are under the storage root, the job's last lines name them; a second submission with a relative
  run_dir and no storage root is refused at start-up.

Grafana itself is not needed: its panels are PromQL sent to Prometheus's HTTP API, with the template
variables substituted the way Grafana does. Range queries over the run's window are what a time-series
panel sends; the job's series vanish from Ray's endpoint soon after the driver exits.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import secrets
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from cluster.config.storage import STORAGE_ENV
from cluster.runtime.ports import free_port
from monitoring.local_prometheus import LocalPrometheus
from monitoring.local_ray_head import LocalRayHead
from monitoring.monitored_stack import MonitoredStack
from monitoring.smoke_job import smoke_entrypoint

# One stack start and one 4-step job for the whole module (~80 s on an idle 2-core machine).
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "jbond.json"
ALERT_RULES = ROOT / "monitoring" / "alerts.yml"
STEPS = 4
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval stands for here (>= 4 scrapes of 1 s)
SCRAPES = 2  # samples a rate() needs inside its window

# Counters that exist only once the event happened: a clean run has no series for them. Their queries must
# still parse, and their names are checked against the code that defines them (test_dashboard_matches_code).
EVENT_ONLY = {
    "ray_jbond_errors_total": "JobMetrics.record_error: only when a component fails",
    "ray_reward_errors_total": "reward_service/serve_app.py: only when a scoring request fails",
}


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(ray_[a-z_]+)\b", expr))


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's $name / ${name} / [[name]] interpolation (a multi-value regex `a|b` for `=~`)."""

    def value(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name not in variables:
            raise KeyError(f"no value for template variable {name!r} in {expr}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def test_dashboard_matches_code():
    """Every metric a query reads is defined: jbond_* in cluster/outputs/metrics.py, reward_* in the reward service,
    serve_* in Ray Serve (exported as ray_<name>, counters as ray_<name>_total)."""
    serve_dir = Path(importlib.util.find_spec("ray").origin).parent / "serve"  # read, not imported: faster
    sources = {
        "ray_jbond_": (ROOT / "cluster" / "outputs" / "metrics.py").read_text(),
        "ray_reward_": (ROOT / "reward_service" / "serve_app.py").read_text(),
        "ray_serve_": "\n".join(p.read_text() for p in serve_dir.rglob("*.py")),
    }
    missing = []
    for title, expr in dashboard_targets():
        for name in metric_names(expr):
            base = re.sub(r"_(total|bucket|sum|count)$", "", name).removeprefix("ray_")
            source = next(text for prefix, text in sources.items() if name.startswith(prefix))
            if f'"{base}"' not in source:
                missing.append(f"{title}: {name} ({base!r} is not a metric name in the code)")
    assert not missing, "\n".join(missing)


@dataclass
class MonitoredRun:
    head: LocalRayHead
    prometheus: LocalPrometheus
    submission_id: str
    run: str  # the job's `run` tag: the name of its run_dir
    run_dir: Path  # where the outputs should be: run.storage_path / the relative run.run_dir
    refused_id: str  # a submission with a relative run_dir and no storage root
    start: float
    end: float


@pytest.fixture(scope="module")
def monitored_run(tiny_dir, tmp_path_factory):
    if shutil.which("prometheus") is None:  # a test installs nothing: `make prometheus` does (CI runs it)
        pytest.skip("prometheus not on PATH: install Debian's prometheus (make prometheus)")
    tmp = tmp_path_factory.mktemp("monitoring")
    # One malformed prompt row: the job counts it as skipped, so the skipped-samples panel has real data.
    prompts = tmp / "prompts.jsonl"
    prompts.write_text((ROOT / "configs" / "review_prompts.jsonl").read_text().rstrip("\n") + '\n{"prompt": "  "}\n')
    storage, run_name = tmp / "storage", f"runs/monitoring-{secrets.token_hex(3)}"
    job_args = {
        "prompts.path": prompts,
        "models.policy": tiny_dir / "policy",
        "reward.path_or_name": tiny_dir / "reward",
        "run.show_samples": 0,
        "reward.http_port": free_port(),
        # evaluations before the first step and after the last, small and cheap, for the Best-of-N and hacking
        # panels; the gold is the trained-on reward itself (gold never falls while the proxy rises: no alert)
        "eval.every_steps": STEPS,
        "eval.holdout_fraction": 0.1,
        "eval.num_prompts": 2,
        "eval.bon_samples": 4,
        "eval.gold_reward": f"{{kind: learned, path_or_name: '{tiny_dir / 'reward'}'}}",
    }
    stack = MonitoredStack(tmp / "prometheus", num_cpus=4)  # smoke.yaml asks for 3.5 CPUs
    stack.head.env.pop(STORAGE_ENV, None)  # the refusal below must not depend on the caller's environment
    try:
        stack.start()
        head = stack.head
        submission_id, refused_id = f"jbond-monitoring-{secrets.token_hex(4)}", f"jbond-refused-{secrets.token_hex(4)}"
        start = time.time()
        head.submit(smoke_entrypoint(run_name, STEPS, {**job_args, "run.storage_path": storage}), submission_id)
        head.submit(smoke_entrypoint("runs/refused", STEPS, job_args), refused_id)
        record = head.wait_for_job(submission_id, timeout_s=300)
        assert record["status"] == "SUCCEEDED", head.job_logs(submission_id)[-5000:]
        run = MonitoredRun(
            head,
            stack.prometheus,
            submission_id,
            Path(run_name).name,
            storage / run_name,
            refused_id,
            start,
            time.time(),
        )
        _wait_for_the_run_in_prometheus(run)
        yield run
    finally:
        stack.stop()


def wait_for(what: str, probe, *args, timeout_s: float = 60):
    """probe(*args) until it returns something true, or fail saying what never arrived. Nothing here assumes a
    pace: scrapes, Ray's metric reports and rule evaluations come late on a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while not (got := probe(*args)):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen after {timeout_s:.0f} s (last answer: {got!r})")
        time.sleep(0.5)
    return got


def instant(prom: LocalPrometheus, query: str) -> list[dict]:
    return prom.api("query", query=query)["result"]


def rules_evaluated_after(prom: LocalPrometheus, t: float) -> list[dict]:
    """The loaded rules if each has been evaluated after time t, else []."""
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    return rules if all(datetime.fromisoformat(r["lastEvaluation"]).timestamp() > t for r in rules) else []


def our_target(head: LocalRayHead, prom: LocalPrometheus) -> list[dict]:
    """The head's metrics endpoint among Prometheus's targets, once a scrape of it succeeded."""
    targets = prom.api("targets")["activeTargets"]
    return [t for t in targets if t["scrapeUrl"].endswith(f":{head.metrics_port}/metrics") and t["health"] == "up"]


def _wait_for_the_run_in_prometheus(run: MonitoredRun) -> None:
    """The driver's final values reach Prometheus a report and a scrape after the job ends; the dashboard's
    rate() windows need SCRAPES samples of the run's histograms inside one window."""
    prom, selector, span = run.prometheus, f'{{run="{run.run}"}}', f"{math.ceil(time.time() - run.start) + 60}s"
    wait_for(
        f"step {STEPS} of run {run.run}",
        instant,
        prom,
        f"max(max_over_time(ray_jbond_step{selector}[{span}])) == {STEPS}",
    )
    run.end = time.time()
    wait_for(
        f"{SCRAPES} scrapes of run {run.run}'s phase histograms within {RATE_INTERVAL}",
        instant,
        prom,
        f"min(max_over_time(count_over_time(ray_jbond_phase_seconds_count{selector}[{RATE_INTERVAL}])[{span}:1s]))"
        f" >= {SCRAPES}",
    )


def test_prometheus_scrapes_the_cluster_through_file_sd(monitored_run):
    head, prom = monitored_run.head, monitored_run.prometheus
    wait_for(f"a successful scrape of the head's metrics port {head.metrics_port}", our_target, head, prom)


def test_every_dashboard_query_returns_data(monitored_run):
    prom, window = monitored_run.prometheus, (monitored_run.start, monitored_run.end)
    # Grafana fills the variables from these label_values() queries; so does the test.
    runs = prom.api("label/run/values", **{"match[]": "ray_jbond_step", "start": window[0], "end": window[1]})
    assert monitored_run.run in runs, runs
    apps = prom.api(
        "label/app/values", **{"match[]": "ray_reward_batch_samples_count", "start": window[0], "end": window[1]}
    )
    assert apps, "no reward service metrics scraped"
    variables = {
        "run": monitored_run.run,
        "reward_app": "|".join(apps),
        "DS_PROMETHEUS": "prometheus",
        "__rate_interval": RATE_INTERVAL,
        "__interval": "1s",
        "__range": "5m",
    }

    failures, checked = [], 0
    for title, expr in dashboard_targets():
        query = substitute(expr, variables)
        result = prom.query_range(query, *window)  # raises on a PromQL error
        checked += 1
        if metric_names(expr) & EVENT_ONLY.keys():
            continue
        values = [float(v) for series in result for _, v in series["values"]]
        if not values:
            never = [n for n in sorted(metric_names(expr)) if not prom.query_range(f"count({n})", *window)]
            failures.append(
                f"{title}: no data for {query}" + (f" ({', '.join(never)}: never exported by the run)" if never else "")
            )
        elif not any(math.isfinite(v) for v in values):
            failures.append(f"{title}: only NaN/Inf for {query}")
    assert checked == len(dashboard_targets())
    assert not failures, f"{len(failures)} of {checked} dashboard queries have no data:\n" + "\n".join(failures)


def test_skipped_prompt_row_is_counted(monitored_run):
    result = monitored_run.prometheus.api(
        "query",
        query=f'sum by (reason) (ray_jbond_skipped_samples_total{{run="{monitored_run.run}"}})',
        time=monitored_run.end,
    )["result"]
    assert {r["metric"]["reason"]: float(r["value"][1]) for r in result} == {"prompt empty": 1.0}


def test_ray_dashboard_answers_and_lists_the_job(monitored_run):
    head = monitored_run.head
    with urllib.request.urlopen(head.dashboard_url + "/", timeout=10) as response:  # the web app itself
        assert response.status == 200 and b"<html" in response.read().lower()
    with pytest.raises(urllib.error.HTTPError) as denied:  # token auth is on: no token, no job list
        urllib.request.urlopen(head.dashboard_url + "/api/jobs/", timeout=10)
    assert denied.value.code == 401
    jobs = {j["submission_id"]: j for j in head.get_json("/api/jobs/") if j.get("submission_id")}
    job = jobs[monitored_run.submission_id]
    assert job["status"] == "SUCCEEDED"
    assert "-m cluster.main --config configs/smoke.yaml" in job["entrypoint"]


def test_ray_dashboard_reaches_its_prometheus_and_lists_where_the_series_came_from(monitored_run):
    """Ray 2.60's dashboard has no query API of its own: its charts are Grafana panels on the Prometheus named by
    RAY_PROMETHEUS_HOST. What it serves is a health check of that Prometheus and the scrape targets (HTTP
    service discovery); the project's series in that Prometheus must come from those targets."""
    head, prom = monitored_run.head, monitored_run.prometheus
    assert head.env["RAY_PROMETHEUS_HOST"] == prom.url
    health = head.get_json("/api/prometheus_health")
    assert health["result"] is True and health["msg"] == "prometheus running", health
    targets = {t for group in head.get_json("/api/prometheus/sd") for t in group["targets"]}
    assert any(t.endswith(f":{head.metrics_port}") for t in targets), targets
    series = prom.api(
        "series",
        **{
            "match[]": f'{{__name__=~"ray_jbond_.+", run="{monitored_run.run}"}}',
            "start": monitored_run.start,
            "end": monitored_run.end,
        },
    )
    names = {s["__name__"] for s in series}
    assert {
        "ray_jbond_step",
        "ray_jbond_reward_policy",
        "ray_jbond_kl_ref",
        "ray_jbond_max_staleness",
        "ray_jbond_phase_seconds_count",
    } <= names, names
    assert {s["instance"] for s in series} <= targets


def test_prometheus_loaded_every_alert_rule_and_a_healthy_run_fires_none(monitored_run):
    prom = monitored_run.prometheus
    shipped = {r["alert"] for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]}
    # each rule has been evaluated against the run's real series without an error, once after its last step
    after = f"an evaluation of every rule after run {monitored_run.run}'s last step"
    loaded = wait_for(after, rules_evaluated_after, prom, monitored_run.end)
    assert {r["name"] for r in loaded} == shipped
    assert all(r["health"] == "ok" for r in loaded), loaded
    # this Prometheus scrapes only this stack: no alert was pending or firing at any evaluation since the run began
    since_start = f"{math.ceil(time.time() - monitored_run.start)}s"
    assert instant(prom, f"count_over_time(ALERTS[{since_start}])") == []
    assert prom.api("alerts")["alerts"] == []


def test_outputs_land_under_the_storage_root_and_the_job_says_where(monitored_run):
    run_dir = monitored_run.run_dir
    assert len((run_dir / "stats.jsonl").read_text().splitlines()) == STEPS
    assert (run_dir / "final_policy" / "config.json").exists()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["run_dir"] == str(run_dir)
    logs = monitored_run.head.job_logs(monitored_run.submission_id)
    assert f"run dir: {run_dir}\n" in logs and f"{run_dir}/final_policy/" in logs, logs[-2000:]


def test_relative_run_dir_without_storage_root_is_refused_at_start_up(monitored_run):
    head = monitored_run.head
    record = head.wait_for_job(monitored_run.refused_id, timeout_s=60)
    logs = head.job_logs(monitored_run.refused_id)
    assert record["status"] == "FAILED", logs
    assert "config error: run.run_dir: 'runs/refused' is relative and it runs as a `ray job submit` job" in logs
    assert "system up" not in logs  # refused before any actor, engine or learner started
