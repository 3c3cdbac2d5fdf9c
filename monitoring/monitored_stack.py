"""A local Ray head whose dashboard knows its Prometheus, and that Prometheus scraping it with the shipped config.

Used by `make monitor`, `make dashboard-screenshot` and the monitoring test. The order matters: the dashboard
reads RAY_PROMETHEUS_HOST (and RAY_GRAFANA_HOST) once, when the head starts, so Prometheus's address is chosen
first; Prometheus needs the head's service-discovery file, whose path is known before the head starts.
"""

from __future__ import annotations

from pathlib import Path

from monitoring.local_prometheus import LocalPrometheus, render_config
from monitoring.local_ray_head import LocalRayHead


class MonitoredStack:
    def __init__(
        self,
        directory: Path,
        num_cpus: int = 4,
        grafana_url: str = "",
        prometheus_port: int = 0,
        dashboard_port: int = 0,
        scrape_interval: str = "1s",
        env: dict[str, str] | None = None,
    ):
        self.head = LocalRayHead(num_cpus=num_cpus, dashboard_port=dashboard_port)
        self.prometheus = LocalPrometheus(
            Path(directory), render_config(self.head.service_discovery_file, scrape_interval), port=prometheus_port
        )
        # The dashboard's own time-series panels are Grafana panels fed by this Prometheus: without a Grafana
        # the dashboard still checks Prometheus (/api/prometheus_health) but hides the charts.
        self.head.env["RAY_PROMETHEUS_HOST"] = self.prometheus.url
        if grafana_url:
            self.head.env["RAY_GRAFANA_HOST"] = grafana_url.rstrip("/")
        self.head.env.update(env or {})

    def start(self) -> MonitoredStack:
        self.head.start()
        try:
            self.prometheus.start()
        except BaseException:
            self.head.stop()
            raise
        return self

    def stop(self) -> None:
        """Prometheus first (it would log scrape errors against a dying head), then the head and its processes."""
        try:
            self.prometheus.stop()
        finally:
            self.head.stop()

    def __enter__(self) -> MonitoredStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
