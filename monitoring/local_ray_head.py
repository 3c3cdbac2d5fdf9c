"""A throwaway Ray head on this machine: free ports, its own temp dir, token auth on, stopped by process group.

Used by the monitoring test and the dashboard screenshot. Why not `ray stop`: it kills every Ray process on
the machine (it matches process names), including other people's clusters; this head is started in its own
session, so signalling its process group ends exactly the processes it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cluster.runtime.ports import free_port
from monitoring.local_prometheus import answers

RAY = Path(sys.executable).with_name("ray")


class LocalRayHead:
    """`ray start --head --block` on free ports; `env` is what a client (driver, `ray job submit`) needs."""

    def __init__(
        self,
        num_cpus: int = 2,
        metrics_report_interval_ms: int = 1000,
        dashboard_port: int = 0,
        extra_args: tuple[str, ...] = (),
    ):
        # A short path under /tmp: Ray's unix sockets live under the temp dir and are limited to ~107 chars.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="jmon-", dir="/tmp"))
        self.port, self.metrics_port = free_port(), free_port()
        self.dashboard_port = dashboard_port or free_port()
        self.num_cpus = num_cpus
        self.extra_args = extra_args  # more `ray start` flags, e.g. ("--labels", '{"pool": "actors"}')
        # Token auth on, with a token of our own: ~/.ray/auth_token is shared with anyone else on the machine.
        self.token = secrets.token_hex(16)
        token_path = self.temp_dir / "auth_token"
        token_path.write_text(self.token)
        token_path.chmod(0o600)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            "RAY_ADDRESS": f"127.0.0.1:{self.port}",
            # The autoscaler's and the dashboard's own metrics endpoints default to fixed ports
            # (44217, 44227): two heads on one machine would fight over them.
            "AUTOSCALER_METRIC_PORT": str(free_port()),
            "DASHBOARD_METRIC_PORT": str(free_port()),
            # Every Ray process pushes its metrics to the node's endpoint this often (default 10 s).
            # A short run finishes its steps within one default interval, so each counter would
            # appear once, at its final value, and rate() would see no increase at all.
            "RAY_metrics_report_interval_ms": str(metrics_report_interval_ms),
        }
        self.log = self.temp_dir / "ray_start.log"
        self._proc: subprocess.Popen | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def service_discovery_file(self) -> Path:
        """Ray rewrites this every few seconds with every node's metrics endpoint (Prometheus file_sd format)."""
        return self.temp_dir / "ray" / "prom_metrics_service_discovery.json"

    def start(self, timeout_s: float = 90) -> LocalRayHead:
        # Fixed defaults (agent HTTP 52365, Ray client 10001, ...) would clash with any other head on
        # this machine: the job agent then never comes up and `ray job submit` gets "No available agent".
        own_ports = (
            "dashboard-agent-listen-port dashboard-agent-grpc-port runtime-env-agent-port ray-client-server-port"
        )
        cmd = [
            str(RAY),
            *f"start --head --block --port {self.port} --dashboard-host 127.0.0.1 --dashboard-port "
            f"{self.dashboard_port} --metrics-export-port {self.metrics_port} --temp-dir {self.temp_dir / 'ray'} "
            f"--num-cpus {self.num_cpus} --include-dashboard true --disable-usage-stats".split(),
            *(f"--{flag}={free_port()}" for flag in own_ports.split()),
            *self.extra_args,
        ]
        with open(self.log, "w") as log:
            self._proc = subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self._proc.returncode}:\n{self.log.read_text()[-3000:]}")
            # Up = the dashboard answers and the node's metrics endpoint is listed for Prometheus.
            if self._lists_metrics_port() and answers(self._request(self.dashboard_url + "/api/version")):
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"Ray head not up after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def _lists_metrics_port(self) -> bool:
        try:
            return f':{self.metrics_port}"' in self.service_discovery_file.read_text()
        except OSError:
            return False

    def _request(self, url: str, method: str = "GET") -> urllib.request.Request:
        return urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"}, method=method)

    def get_json(self, path: str):
        """GET the dashboard's HTTP API (e.g. /api/jobs/) with this head's token."""
        with urllib.request.urlopen(self._request(self.dashboard_url + path), timeout=10) as response:
            return json.load(response)

    def submit(self, entrypoint: str, submission_id: str, timeout_s: float = 120) -> None:
        """`ray job submit --no-wait` through the CLI, as a user would (RAY_AUTH_MODE=token + our token)."""
        address = f"--address {self.dashboard_url} --no-wait --submission-id {submission_id}"
        cmd = [str(RAY), "job", "submit", *address.split(), "--", "bash", "-c", entrypoint]
        deadline = time.monotonic() + timeout_s
        while True:
            out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout_s)
            if out.returncode == 0:
                return
            # The head answers HTTP before its node's job agent has registered; that one is worth a retry.
            if "No available agent" not in out.stderr + out.stdout or time.monotonic() > deadline:
                raise RuntimeError(f"ray job submit failed ({out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
            time.sleep(2)

    def wait_for_job(self, submission_id: str, timeout_s: float) -> dict:
        """Poll the jobs API until the job ends; returns its record (status SUCCEEDED / FAILED / STOPPED)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = self.get_json(f"/api/jobs/{submission_id}")
            if record["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                return record
            time.sleep(2)
        raise TimeoutError(f"job {submission_id} still {record['status']} after {timeout_s} s")

    def stop_job(self, submission_id: str, timeout_s: float = 60) -> dict:
        """Ask the job to stop (SIGTERM to its driver, then SIGKILL after Ray's grace period) and wait until it
        has: only then may its files be removed."""
        if self.get_json(f"/api/jobs/{submission_id}")["status"] in ("PENDING", "RUNNING"):
            url = f"{self.dashboard_url}/api/jobs/{submission_id}/stop"
            with urllib.request.urlopen(self._request(url, method="POST"), timeout=10) as response:
                response.read()
        return self.wait_for_job(submission_id, timeout_s)

    def job_logs(self, submission_id: str) -> str:
        return self.get_json(f"/api/jobs/{submission_id}/logs")["logs"]

    def stop(self, grace_s: float = 3) -> None:
        if self._proc is not None:
            pgid = self._proc.pid  # session leader: its pid is the group id of everything Ray spawned
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and (self._proc.poll() is None or _group_alive(pgid)):
                time.sleep(0.3)
            _signal_group(pgid, signal.SIGKILL)
            self._proc.wait(timeout=10)
            self._proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Any live (not zombie) process in the group? Read from /proc: state and pgrp follow the ')' of comm."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False
