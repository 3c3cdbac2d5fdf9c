"""Screenshots of a short J-BOND run as an operator sees it: `python -m monitoring.screenshot_dashboard`.

Starts the monitored stack of `make monitor` (a throwaway Ray head on 127.0.0.1 with token auth, its dashboard
pointed at a Debian Prometheus that scrapes it with the shipped config), submits configs/smoke.yaml with
`ray job submit`, waits until Prometheus holds several learner steps, and saves headless-Chromium captures of
the Ray dashboard (default artifacts/ray_dashboard.png) and of Prometheus's graph of the run's reward and
KL(pi||ref) (artifacts/prometheus_jbond.png). Then it stops the job, and only after that removes anything.
Installs Debian's `chromium` on first use.

The Ray dashboard's own time-series panels are Grafana panels (Ray 2.60 draws none itself): they appear
only with --grafana-url, a Grafana provisioned as monitoring/README.md says. Without one the
dashboard shows jobs, actors and Serve, and says its charts are hidden.

Why the DevTools protocol instead of `chromium --screenshot URL`: with token auth the dashboard web app
only shows data to a browser holding the `ray-authentication-token` cookie, which no command-line flag can
set; over the protocol we set the cookie, load the page, let its JavaScript render, then capture.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from cluster.runtime.ports import free_port
from monitoring.local_prometheus import LocalPrometheus, find_or_install_prometheus, terminate
from monitoring.local_ray_head import LocalRayHead
from monitoring.monitor import prometheus_graph_url
from monitoring.monitored_stack import MonitoredStack
from monitoring.smoke_job import ROOT, smoke_entrypoint

COOKIE = "ray-authentication-token"  # the cookie name Ray's token authentication sets
# No network chatter, no first-run UI, no GPU (none here), no sandbox (root in a container).
CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-sync --disable-component-update --disable-dev-shm-usage --hide-scrollbars"
    " --remote-debugging-address=127.0.0.1"
).split()


def find_or_install_chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], check=True, env=env)
        found = shutil.which("chromium")
    if not found:
        raise RuntimeError("chromium is not on PATH after apt-get install chromium")
    return found


async def capture(url: str, token: str | None, out: Path, width: int, height: int, settle_s: float) -> None:
    """Drive a headless Chromium over the DevTools protocol: cookie (a Ray token, if given), navigate, wait, PNG."""
    import aiohttp  # Ray's own dependency, so already installed

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:  # a fresh, empty profile each time
        window = [f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--remote-debugging-port={port}"]
        proc = subprocess.Popen(
            [find_or_install_chromium(), *CHROMIUM_FLAGS, *window, "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            ws_url = await _page_websocket(port)
            async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
                ids = iter(range(1, 1_000_000))

                async def call(method: str, **params) -> dict:
                    msg_id = next(ids)
                    await ws.send_json({"id": msg_id, "method": method, "params": params})
                    while True:  # skip events until our reply
                        reply = json.loads((await ws.receive()).data)
                        if reply.get("id") == msg_id:
                            if "error" in reply:
                                raise RuntimeError(f"{method}: {reply['error']}")
                            return reply["result"]

                await call("Network.enable")
                if token:
                    await call("Network.setCookie", name=COOKIE, value=token, url=url.split("#")[0])
                await call(
                    "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
                )
                await call("Page.enable")
                await call("Page.navigate", url=url)
                await asyncio.sleep(settle_s)  # the web app fetches and renders for a few seconds
                shot = await call("Page.captureScreenshot", format="png")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            terminate(proc)


async def _page_websocket(port: int, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                pages = [t for t in json.load(response) if t["type"] == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        await asyncio.sleep(0.3)
    raise TimeoutError(f"chromium's DevTools endpoint did not come up on port {port}")


def wait_for_training(
    head: LocalRayHead, prometheus: LocalPrometheus, submission_id: str, run: str, steps: int, timeout_s: float
) -> float:
    """Until Prometheus holds `steps` learner steps of the run and the reward service is listed: the pictures
    then show a line with a shape and every actor and the Serve app busy, not a half-started cluster.
    Returns the time the first step was seen (the start of the graph's window)."""
    deadline, first_step = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        status = head.get_json(f"/api/jobs/{submission_id}")["status"]
        if status in ("FAILED", "STOPPED", "SUCCEEDED"):
            raise RuntimeError(
                f"job {status} before {steps} steps were scraped:\n{head.job_logs(submission_id)[-4000:]}"
            )
        serve_apps = head.get_json("/api/serve/applications/").get("applications") or {}
        seen = prometheus.api("query", query=f'max(max_over_time(ray_jbond_step{{run="{run}"}}[10m]))')["result"]
        if seen and first_step is None:
            first_step = time.time()
        if serve_apps and seen and float(seen[0]["value"][1]) >= steps:
            return first_step
        time.sleep(1)
    raise TimeoutError(
        f"Prometheus saw fewer than {steps} steps after {timeout_s} s:\n{head.job_logs(submission_id)[-4000:]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "ray_dashboard.png")
    parser.add_argument("--prometheus-out", type=Path, default=ROOT / "artifacts" / "prometheus_jbond.png")
    parser.add_argument("--page", default="#/overview", help="dashboard route, e.g. #/jobs or #/actors")
    parser.add_argument("--grafana-url", default="", help="a Grafana for the dashboard's charts (RAY_GRAFANA_HOST)")
    parser.add_argument(
        "--capture-after-steps", type=int, default=12, help="learner steps Prometheus must hold before the capture"
    )
    parser.add_argument(
        "--steps", type=int, default=200, help="learner steps of the run: it outlives the capture, stopped after it"
    )
    args = parser.parse_args()
    find_or_install_chromium()  # before the cluster: a failed install should cost nothing
    find_or_install_prometheus()
    # The run's directory outlives the stack (entered first, left last); the job is stopped before either goes.
    with (
        tempfile.TemporaryDirectory(prefix="jbond-shot-") as tmp,
        MonitoredStack(Path(tmp) / "prometheus", num_cpus=4, grafana_url=args.grafana_url) as stack,
    ):
        head, prometheus = stack.head, stack.prometheus
        run_dir = Path(tmp) / "dashboard-screenshot"
        submission_id = f"jbond-screenshot-{int(time.time())}"
        overrides = {"run.show_samples": 0, "run.checkpoint_every": 0, "reward.http_port": free_port()}
        head.submit(smoke_entrypoint(run_dir, args.steps, overrides), submission_id)
        try:
            print(
                f"job {submission_id} submitted to {head.dashboard_url}; waiting for "
                f"{args.capture_after_steps} learner steps in Prometheus",
                flush=True,
            )
            first_step = wait_for_training(
                head, prometheus, submission_id, run_dir.name, args.capture_after_steps, timeout_s=400
            )
            asyncio.run(capture(f"{head.dashboard_url}/{args.page}", head.token, args.out, 1400, 1000, settle_s=15))
            print(f"saved {args.out}", flush=True)
            window_s = int(time.time() - first_step) + 10  # the run's steps across the whole graph
            graph = prometheus_graph_url(prometheus.url, range_input=f"{window_s}s")
            asyncio.run(capture(graph, None, args.prometheus_out, 1400, 1350, settle_s=5))
            print(f"saved {args.prometheus_out}", flush=True)
        finally:
            status = head.stop_job(submission_id)["status"]
            print(f"job {submission_id} {status}", flush=True)


if __name__ == "__main__":
    main()
