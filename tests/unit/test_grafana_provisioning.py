"""Grafana provisioning: the data-source and dashboard files of monitoring/grafana/provisioning, and the
dashboard JSON they load, checked the way Grafana reads them (there is no Grafana package to start here).

A stock Grafana started with GF_PATHS_PROVISIONING=monitoring/grafana/provisioning shows the dashboard
with data only if: the provider's path (after Grafana's $VARIABLE expansion) holds the JSON, every panel's and
every query's data source resolves to the provisioned uid, and the JSON is a dashboard Grafana accepts (uid,
schemaVersion, unique panel ids, a gridPos that fits the 24-column grid, a PromQL expr in every target).
The queries themselves are sent to a real Prometheus in tests/integration/test_monitoring.py, and the phase
panels to promtool's PromQL engine here, on a run too short for their rate window.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitoring import build_dashboard

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "monitoring" / "grafana"
PROVISIONING = GRAFANA / "provisioning"
# What the README tells users to set for Grafana.
ENV = {"JBOND_GRAFANA_DIR": str(GRAFANA), "JBOND_PROMETHEUS_URL": "http://127.0.0.1:9090"}


def expand(node, env: dict[str, str]):
    """Grafana's expansion of the values of a parsed provisioning file: $NAME and ${NAME} (unset: '')."""
    if isinstance(node, dict):
        return {k: expand(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [expand(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in env, f"provisioning file uses ${name}, which the documented start-up does not set"
        return env[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, node)


def provisioning(kind: str) -> list[dict]:
    files = sorted((PROVISIONING / kind).glob("*.yaml"))
    assert files, f"no provisioning/{kind}/*.yaml"
    docs = [expand(yaml.safe_load(f.read_text()), ENV) for f in files]
    assert all(d["apiVersion"] == 1 for d in docs)
    return docs


@pytest.fixture(scope="module")
def datasource() -> dict:
    (source,) = [s for doc in provisioning("datasources") for s in doc["datasources"]]
    return source


@pytest.fixture(scope="module")
def dashboards() -> list[dict]:
    providers = [p for doc in provisioning("dashboards") for p in doc["providers"]]
    assert [p["type"] for p in providers] == ["file"]
    folder = Path(providers[0]["options"]["path"])
    assert folder.is_absolute() and folder.is_dir(), folder
    files = sorted(folder.rglob("*.json"))
    assert [f.name for f in files] == ["jbond.json"]
    return [json.loads(f.read_text()) for f in files]


def test_datasource_is_the_prometheus_the_dashboard_names(datasource):
    assert datasource["type"] == "prometheus" and datasource["access"] == "proxy"
    assert datasource["url"] == ENV["JBOND_PROMETHEUS_URL"]
    assert (datasource["name"], datasource["uid"]) == (
        build_dashboard.PROVISIONED_DATASOURCE["name"],
        build_dashboard.PROVISIONED_DATASOURCE["uid"],
    )
    assert datasource["name"] == "Prometheus"  # Ray's default RAY_PROMETHEUS_NAME: Ray's dashboards find it too
    # Grafana's $__rate_interval is 4 x this; prometheus.yml scrapes at the same interval
    shipped = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    assert datasource["jsonData"]["timeInterval"] == shipped["global"]["scrape_interval"]


def test_dashboard_file_is_what_build_dashboard_writes():
    assert build_dashboard.OUTPUT.read_text() == build_dashboard.render(), (
        "grafana/dashboards/jbond.json is stale: run `python -m monitoring.build_dashboard`"
    )


def resolves(ref: dict | None, variables: dict[str, dict], source: dict) -> bool:
    """A panel/target `datasource` reaches the provisioned one: by uid, or through a datasource variable whose
    preset value is that uid and whose type is the data source's type."""
    if not ref:
        return False
    uid = ref.get("uid", "")
    if ref.get("type") != source["type"]:
        return False
    match = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", uid)
    if not match:
        return uid == source["uid"]
    var = variables.get(match.group(1) or match.group(2))
    return (
        bool(var)
        and var["type"] == "datasource"
        and var["query"] == source["type"]
        and var["current"].get("value") == source["uid"]
    )


def test_every_panel_and_query_resolves_to_the_provisioned_datasource(dashboards, datasource):
    for board in dashboards:
        variables = {v["name"]: v for v in board["templating"]["list"]}
        for var in variables.values():
            if var["type"] == "query":
                assert resolves(var["datasource"], variables, datasource), var["name"]
                assert var["query"]["query"].strip(), var["name"]
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert resolves(panel.get("datasource"), variables, datasource), panel["title"]
            assert panel["targets"], f"{panel['title']}: no query"
            for target in panel["targets"]:
                assert resolves(target.get("datasource"), variables, datasource), (panel["title"], target)


def test_dashboard_is_a_valid_grafana_dashboard(dashboards):
    for board in dashboards:
        assert board["uid"] and len(board["uid"]) <= 40 and board["title"]
        assert isinstance(board["schemaVersion"], int) and 36 <= board["schemaVersion"] <= 41
        assert "id" not in board or board["id"] is None  # a provisioned dashboard must not carry a database id
        ids = [p["id"] for p in board["panels"]]
        assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), "panel ids must be unique"
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
            assert grid["w"] >= 1 and grid["h"] >= 1 and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
            mine = {
                (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not mine & cells, f"{panel['title']} overlaps another panel"
            cells |= mine
            assert panel["type"] in ("row", "timeseries", "stat", "gauge", "table"), panel["type"]
            if panel["type"] != "row":
                ref_ids = [t["refId"] for t in panel["targets"]]
                assert len(ref_ids) == len(set(ref_ids)), f"{panel['title']}: duplicate refId"
                for target in panel["targets"]:
                    assert target.get("expr", "").strip(), f"{panel['title']}: a target without expr"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH: install Debian's prometheus")
def test_phase_panels_show_a_run_whose_histograms_never_grew_inside_a_rate_window(tmp_path):
    """A short run whose steps all reached Ray's endpoint in one report: its phase histogram is flat from its first
    scrape, so rate() is 0 and a windowed quantile or mean is 0/0. The panels still show its values (promtool)."""
    panels = {p.title: p for _, row in build_dashboard.ROWS for p in row}
    targets = [*panels["Loop phase seconds, p50 / p95"].targets, *panels["Mean seconds per phase"].targets]
    run = 'run="r", phase="learn", WorkerId="w"'
    flat = (
        ("sum", "", 3),
        ("count", "", 4),
        ("bucket", ', le="0.5"', 0),
        ("bucket", ', le="1"', 4),
        ("bucket", ', le="+Inf"', 4),
    )
    inputs = [{"series": f"ray_jbond_phase_seconds_{name}{{{run}{le}}}", "values": f"{n}x60"} for name, le, n in flat]
    expected = [0.75, 0.975, 0.75]  # p50, p95 by linear interpolation in (0.5, 1]; mean = 3 s / 4 steps
    cases = [
        {
            "expr": expr.replace("$run", "r").replace("$__rate_interval", "1m"),
            "eval_time": "1m",
            "exp_samples": [{"labels": '{phase="learn"}', "value": value}],
        }
        for (expr, _), value in zip(targets, expected, strict=True)
    ]
    (tmp_path / "none.yml").write_text("groups: []\n")
    test = {
        "rule_files": ["none.yml"],
        "tests": [{"interval": "1s", "input_series": inputs, "promql_expr_test": cases}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    out = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
