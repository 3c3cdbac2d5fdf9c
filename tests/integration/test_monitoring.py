"""Monitoring end to end: a real Ray head, a real Prometheus scraping it through the shipped prometheus.yml, a
real J-BOND job (`python -m cluster.main`, submitted with `ray job submit`), and every PromQL query of the
Grafana dashboard answered with data from that run. Also: the Ray dashboard answers and lists the job.

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
from pathlib import Path

import pytest

from cluster.monitoring import build_dashboard
from cluster.monitoring.local_prometheus import LocalPrometheus, find_or_install_prometheus, render_config
from cluster.monitoring.local_ray_head import LocalRayHead
from cluster.monitoring.smoke_job import smoke_entrypoint

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "monitoring" / "grafana" / "dashboards" / "jbond.json"
STEPS = 4
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval stands for here (>= 4 scrapes of 1 s)

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
    """Every metric a query reads is defined: jbond_* in cluster/metrics.py, reward_* in the reward service,
    serve_* in Ray Serve (exported as ray_<name>, counters as ray_<name>_total)."""
    serve_dir = Path(importlib.util.find_spec("ray").origin).parent / "serve"  # read, not imported: faster
    sources = {
        "ray_jbond_": (ROOT / "cluster" / "metrics.py").read_text(),
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
    start: float
    end: float


@pytest.fixture(scope="module")
def monitored_run(tiny_dir, tmp_path_factory):
    try:
        find_or_install_prometheus()
    except RuntimeError as e:
        pytest.skip(f"Debian's prometheus is not installed and cannot be installed here: {e}")
    tmp = tmp_path_factory.mktemp("monitoring")
    # One malformed prompt row: the job counts it as skipped, so the skipped-samples panel has real data.
    prompts = tmp / "prompts.jsonl"
    prompts.write_text((ROOT / "configs" / "review_prompts.jsonl").read_text().rstrip("\n") + '\n{"prompt": "  "}\n')
    run_dir = tmp / f"monitoring-{secrets.token_hex(3)}"
    head = LocalRayHead(num_cpus=4)  # smoke.yaml asks for 3.5 CPUs of actors, learner and reward replica
    prometheus = None
    try:
        head.start()
        prometheus = LocalPrometheus(tmp / "prometheus", render_config(head.service_discovery_file)).start()
        submission_id = f"jbond-monitoring-{secrets.token_hex(4)}"
        start = time.time()
        head.submit(smoke_entrypoint(run_dir, STEPS, {
            "prompts.path": prompts, "models.policy": tiny_dir / "policy",
            "reward.path_or_name": tiny_dir / "reward", "run.show_samples": 0}), submission_id)
        record = head.wait_for_job(submission_id, timeout_s=300)
        assert record["status"] == "SUCCEEDED", head.job_logs(submission_id)[-5000:]
        run = MonitoredRun(head, prometheus, submission_id, run_dir.name, start, time.time())
        _wait_for_last_step(run)
        yield run
    finally:
        if prometheus is not None:
            prometheus.stop()
        head.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def _wait_for_last_step(run: MonitoredRun, timeout_s: float = 30) -> None:
    """The driver's final values reach Prometheus a scrape or two after the job ends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run.end = time.time()
        result = run.prometheus.query_range(f'max(ray_jbond_step{{run="{run.run}"}})', run.start, run.end)
        if result and max(float(v) for _, v in result[0]["values"]) == STEPS:
            return
        time.sleep(1)
    raise TimeoutError(f"Prometheus never saw step {STEPS} of run {run.run}; targets: {run.prometheus.api('targets')}")


def test_prometheus_scrapes_the_cluster_through_file_sd(monitored_run):
    targets = monitored_run.prometheus.api("targets")["activeTargets"]
    ours = [t for t in targets if t["scrapeUrl"].endswith(f":{monitored_run.head.metrics_port}/metrics")]
    assert ours and ours[0]["health"] == "up", targets


def test_every_dashboard_query_returns_data(monitored_run):
    prom, window = monitored_run.prometheus, (monitored_run.start, monitored_run.end)
    # Grafana fills the variables from these label_values() queries; so does the test.
    runs = prom.api("label/run/values", **{"match[]": "ray_jbond_step", "start": window[0], "end": window[1]})
    assert monitored_run.run in runs, runs
    apps = prom.api("label/app/values", **{"match[]": "ray_reward_batch_samples_count",
                                           "start": window[0], "end": window[1]})
    assert apps, "no reward service metrics scraped"
    variables = {"run": monitored_run.run, "reward_app": "|".join(apps), "DS_PROMETHEUS": "prometheus",
                 "__rate_interval": RATE_INTERVAL, "__interval": "1s", "__range": "5m"}

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
            failures.append(f"{title}: no data for {query}"
                            + (f" ({', '.join(never)}: never exported by the run)" if never else ""))
        elif not any(math.isfinite(v) for v in values):
            failures.append(f"{title}: only NaN/Inf for {query}")
    assert checked == len(dashboard_targets())
    assert not failures, f"{len(failures)} of {checked} dashboard queries have no data:\n" + "\n".join(failures)


def test_skipped_prompt_row_is_counted(monitored_run):
    result = monitored_run.prometheus.api(
        "query", query=f'sum by (reason) (ray_jbond_skipped_samples_total{{run="{monitored_run.run}"}})',
        time=monitored_run.end)["result"]
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
