"""Watching a run: Prometheus scrape config, Grafana dashboard, a local Ray head + Prometheus for tests."""
