"""The shipped Prometheus alert rules: valid (`promtool check`), unit-tested (`promtool test rules`) with a firing
and a quiet case for every alert, and reading only metrics the code exports. promtool is Debian's, from the
prometheus package that `make test` installs (monitoring/install_prometheus.sh)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
RULES, RULE_TESTS = MONITORING / "alerts.yml", MONITORING / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH: install Debian's prometheus (make prometheus)"
)
# Metrics that another branch of this project adds; the check below skips them until that code is here.


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@needs_promtool
def test_rules_and_the_shipped_config_pass_promtool_check():
    for args in (("check", "rules", RULES.name), ("check", "config", "prometheus.yml")):
        out = promtool(*args)
        assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(alerts())} rules found" in promtool("check", "rules", RULES.name).stdout


@needs_promtool
def test_every_alert_is_unit_tested_and_the_tests_pass():
    out = promtool("test", "rules", RULE_TESTS.name)
    assert out.returncode == 0, out.stdout + out.stderr
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for alert in (rule["alert"] for rule in alerts()):
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in mine), f"{alert}: no test case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{alert}: no test case where it stays quiet"


def test_shipped_prometheus_config_loads_the_rules():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name]


def test_rules_read_only_metrics_the_code_exports():
    """ray_<name> / ray_<name>_total / _count: <name> must be a metric name in cluster/outputs/metrics.py or the reward
    service (a renamed metric would otherwise leave an alert that can never fire)."""
    sources = (ROOT / "cluster" / "outputs" / "metrics.py").read_text() + (
        ROOT / "reward_service" / "serve_app.py"
    ).read_text()
    names = {re.sub(r"_(total|count|sum|bucket)$", "", m) for m in re.findall(r"\bray_([a-z_]+)", RULES.read_text())}
    assert names, "no metric found in the rules"
    missing = sorted(n for n in names if f'"{n}"' not in sources)
    assert not missing, f"alert rules read metrics nobody exports: {missing}"
