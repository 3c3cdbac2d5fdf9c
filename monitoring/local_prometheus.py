"""A throwaway Prometheus on 127.0.0.1 that scrapes a local Ray head through the shipped prometheus.yml.

The config is the shipped one with only three edits (the head's service-discovery file, a 1 s scrape
interval, absolute paths to the shipped rule files), so a test through this also tests
monitoring/prometheus.yml and alerts.yml.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from cluster.runtime.ports import free_port

HERE = Path(__file__).resolve().parent
SHIPPED_CONFIG = HERE / "prometheus.yml"
INSTALL_SCRIPT = HERE / "install_prometheus.sh"


def find_or_install_prometheus() -> str:
    """The prometheus binary's path; installs Debian's package on first use. Raises RuntimeError if it cannot."""
    found = shutil.which("prometheus")
    if found:
        return found
    out = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0 or not shutil.which("prometheus"):
        raise RuntimeError(f"{INSTALL_SCRIPT.name} failed ({out.returncode}): {(out.stdout + out.stderr)[-2000:]}")
    return shutil.which("prometheus")


def render_config(service_discovery_file: Path, scrape_interval: str = "1s") -> str:
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = scrape_interval
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ray"]
    job["file_sd_configs"][0]["files"] = [str(service_discovery_file)]
    job["file_sd_configs"][0]["refresh_interval"] = "2s"
    # The config is written elsewhere: point its rule files at the shipped ones.
    config["rule_files"] = [str(HERE / name) for name in config["rule_files"]]
    return yaml.safe_dump(config, sort_keys=False)


def answers(request: str | urllib.request.Request) -> bool:
    """Whether the URL answers 200 (within 2 s)."""
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LocalPrometheus:
    def __init__(self, directory: Path, config_text: str, port: int = 0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file = self.directory / "prometheus.yml"
        self.config_file.write_text(config_text)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.directory / "prometheus.log"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30) -> LocalPrometheus:
        cmd = [
            find_or_install_prometheus(),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Debian's build defaults its console templates to /etc/prometheus; none are needed here.
            f"--web.console.templates={self.directory}",
            f"--web.console.libraries={self.directory}",
        ]
        with open(self.log, "w") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if answers(self.url + "/-/ready"):
                return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"prometheus not ready after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def api(self, path: str, **params) -> dict:
        """GET /api/v1/<path>; returns `data`, raises with Prometheus's own error text (e.g. a PromQL parse error)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step_s: float = 1) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step_s)["result"]

    def stop(self) -> None:
        if self._proc is not None:
            terminate(self._proc)
            self._proc = None

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
