"""Watch a J-BOND run locally: `make monitor` (= `python -m monitoring.monitor`).

Starts a Ray head on 127.0.0.1 (token auth on) whose dashboard is told where its Prometheus is
(RAY_PROMETHEUS_HOST, and RAY_GRAFANA_HOST with --grafana-url), Debian's Prometheus scraping it with
monitoring/prometheus.yml and its alert rules, and submits a job with `ray job submit` (default
configs/local.yaml, outputs under runs/). Prints where to look, and keeps everything up after the job ends
until Ctrl-C; then it stops the job first, Prometheus, then the head. Prometheus keeps its data in
runs/monitor/prometheus, so a later `make monitor` still shows earlier runs.

The Ray dashboard draws its own time-series panels with Grafana: give --grafana-url of a Grafana provisioned
with monitoring/grafana/provisioning (README there) to see them; without one it shows jobs, actors,
logs and Serve, and the project's series are in Prometheus (graph, alerts) at the printed address.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import time
from urllib.parse import urlencode

from cluster.config.storage import STORAGE_ENV
from monitoring.local_prometheus import find_or_install_prometheus
from monitoring.monitored_stack import MonitoredStack
from monitoring.smoke_job import ROOT, job_entrypoint

# What a reader wants to see first in Prometheus's own graph page: the objective of the run.
GRAPH_QUERIES = (
    "avg by (run) (last_over_time(ray_jbond_reward_policy[5m]))",
    "avg by (run) (last_over_time(ray_jbond_kl_ref[5m]))",
)


def prometheus_graph_url(base: str, queries=GRAPH_QUERIES, range_input: str = "15m") -> str:
    """Prometheus's own graph page with these queries drawn as time series."""
    params = {}
    for i, query in enumerate(queries):
        params.update({f"g{i}.expr": query, f"g{i}.tab": "0", f"g{i}.range_input": range_input})
    return f"{base}/graph?{urlencode(params)}"


def _interrupt(signum, frame) -> None:
    """`kill` ends like Ctrl-C: in main's finally, which stops the job before the stack goes."""
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.monitor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/local.yaml", help="job config (relative to the checkout)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a job config field (repeatable), as for cluster.main",
    )
    parser.add_argument("--no-job", action="store_true", help="only the head and Prometheus: submit jobs yourself")
    parser.add_argument("--grafana-url", default="", help="a Grafana the Ray dashboard should embed (RAY_GRAFANA_HOST)")
    parser.add_argument("--dashboard-port", type=int, default=8265)
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the head (the job's bundles)")
    parser.add_argument("--exit-when-done", action="store_true", help="stop everything when the job ends")
    args = parser.parse_args(argv)
    bad = [a for a in args.set if "=" not in a]
    if bad:
        parser.error(f"--set {bad[0]!r}: expected section.field=value")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    find_or_install_prometheus()  # before the cluster: a failed install should cost nothing
    runs = ROOT / "runs"
    # Submitted jobs refuse a relative run.run_dir without a storage root: the checkout's runs/, as for `make run`.
    stack = MonitoredStack(
        runs / "monitor" / "prometheus",
        num_cpus=args.num_cpus,
        grafana_url=args.grafana_url,
        prometheus_port=args.prometheus_port,
        dashboard_port=args.dashboard_port,
        scrape_interval="5s",
        env={STORAGE_ENV: str(ROOT)},
    )
    signal.signal(signal.SIGTERM, _interrupt)
    submission_id, status = None, None
    with stack:
        head, prometheus = stack.head, stack.prometheus
        token_file = head.env["RAY_AUTH_TOKEN_PATH"]
        print(
            f"Ray dashboard  {head.dashboard_url}   (token: {head.token}; also in {token_file})\n"
            f"Prometheus     {prometheus.url}   alerts: {prometheus.url}/alerts\n"
            f"J-BOND graphs  {prometheus_graph_url(prometheus.url)}\n"
            f"Grafana        {args.grafana_url or 'none (--grafana-url URL to embed it in the Ray dashboard)'}\n"
            f"submit jobs:   RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token_file} "
            f"ray job submit --address {head.dashboard_url} -- python -m cluster.main ...",
            flush=True,
        )
        try:
            if not args.no_job:
                submission_id = f"jbond-monitor-{secrets.token_hex(3)}"
                overrides = dict(a.split("=", 1) for a in args.set)
                head.submit(job_entrypoint(args.config, overrides), submission_id)
                print(
                    f"job {submission_id} submitted ({args.config}); its log: "
                    f"{head.dashboard_url}/#/jobs/{submission_id}",
                    flush=True,
                )
            while True:
                if submission_id and status is None:
                    record = head.get_json(f"/api/jobs/{submission_id}")
                    if record["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                        status = record["status"]
                        print(head.job_logs(submission_id)[-3000:], flush=True)
                        print(f"job {submission_id} {status}", flush=True)
                        if args.exit_when_done:
                            break
                        print("the dashboard and Prometheus stay up: Ctrl-C to stop", flush=True)
                time.sleep(2)
        except KeyboardInterrupt:
            print("\nstopping", flush=True)
        finally:
            if submission_id and status is None:
                status = head.stop_job(submission_id)["status"]
                print(f"job {submission_id} {status}", flush=True)
    return 0 if status in (None, "SUCCEEDED") else 1


if __name__ == "__main__":
    sys.exit(main())
