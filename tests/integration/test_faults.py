"""Faults in the middle of a real job on a real local Ray: the policy sampler's process and a reward replica's
process are SIGKILLed, and the run still finishes every step, each exactly once in stats.jsonl, with the
restart counted in ray_jbond_actor_restarts_total and logged in one line."""

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import ray
from ray.util.state import list_actors

from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.main import run
from cluster.runtime.ports import free_port
from cluster.training.failures import run_with_auto_resume

ROOT = Path(__file__).resolve().parents[2]


def job_config(tmp_path: Path, tiny_dir: Path, **overrides) -> JobConfig:
    data = loading.load_document(ROOT / "configs" / "smoke.yaml")
    for key, value in {
        "reward.http_port": free_port(),
        "models.policy": tiny_dir / "policy",
        "reward.path_or_name": tiny_dir / "reward",
        "prompts.path": ROOT / "configs" / "review_prompts.jsonl",
        "run.run_dir": tmp_path,
        "run.progress": "false",
        "run.show_samples": 0,
        **overrides,
    }.items():
        loading.apply_override(data, f"{key}={value}")
    return loading.build(JobConfig, data)


def rows(run_dir: Path) -> list[dict]:
    path = run_dir / "stats.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def alive_pid(match) -> tuple[str, int]:
    """(name, pid) of the first live actor whose state record (ray.util.state) satisfies `match`."""
    for info in list_actors(
        address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False
    ):
        if match(info):
            return info.name or info.class_name, info.pid
    raise AssertionError("no such live actor")


class KillAt(threading.Thread):
    """Watches stats.jsonl; once it has `after_rows` rows, SIGKILLs the process of each actor matched, in turn."""

    def __init__(self, run_dir: Path, after_rows: int, *matches):
        super().__init__(daemon=True)
        self.run_dir, self.after_rows, self.matches, self.killed = run_dir, after_rows, matches, []

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while len(rows(self.run_dir)) < self.after_rows and time.monotonic() < deadline:
            time.sleep(0.05)
        for match in self.matches:
            name, pid = alive_pid(match)
            os.kill(pid, signal.SIGKILL)
            self.killed.append(name)


@pytest.fixture(scope="module")
def metrics_ray(tiny_dir):
    port = free_port()
    ray.init(
        num_cpus=4,
        include_dashboard=True,
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 1000},
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    yield port
    ray.shutdown()


@pytest.mark.timeout(300)
def test_killed_sampler_and_reward_replica_the_run_finishes_every_step_once(metrics_ray, tiny_dir, tmp_path, capfd):
    steps = 6
    job = job_config(tmp_path, tiny_dir, **{"run.steps": steps, "run.checkpoint_every": 0})
    killer = KillAt(
        tmp_path,
        2,
        lambda a: (a.name or "").endswith("-policy-0"),
        lambda a: a.class_name.startswith("ServeReplica:"),
    )
    killer.start()
    t0 = time.monotonic()
    summary = run(job)
    seconds = time.monotonic() - t0
    killer.join(timeout=5)
    assert len(killer.killed) == 2, killer.killed
    assert summary["steps"] == steps
    got = rows(tmp_path)
    assert [r["step"] for r in got] == list(range(1, steps + 1))  # every step, each exactly once
    for r in got:  # still on-policy: the redrawn samples came from the re-synced actor
        assert r["sample_policy_version"] == r["step"] - 1 == r["sample_anchor_version"]
    out = capfd.readouterr().out
    restarts = [line for line in out.splitlines() if "policy actor 0 restarted (1/3) after: " in line]
    assert len(restarts) == 1, out[-3000:]  # one line per restart
    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_ray}/metrics", timeout=10) as response:
            text = response.read().decode()
        if "ray_jbond_actor_restarts_total{" in text:
            break
        time.sleep(1)
    lines = [x for x in text.splitlines() if x.startswith("ray_jbond_actor_restarts_total{") and 'role="policy"' in x]
    assert lines and float(lines[0].rsplit(" ", 1)[1]) == 1, lines
    retries = [x for x in text.splitlines() if x.startswith("ray_jbond_errors_total{") and "reward_service" in x]
    print(f"killed {killer.killed}; {steps} steps in {seconds:.0f} s\n{restarts[0]}\nscoring errors: {retries}")


@pytest.mark.timeout(300)
def test_dead_learner_stops_the_job_in_one_line_and_auto_resume_finishes_it(metrics_ray, tiny_dir, tmp_path, capfd):
    steps = 4
    job = job_config(tmp_path, tiny_dir, **{"run.steps": steps, "run.checkpoint_every": 1, "run.auto_resume": 1})
    killer = KillAt(tmp_path, 2, lambda a: a.class_name == "LearnerRank")
    killer.start()
    lines = []
    t0 = time.monotonic()
    summary = run_with_auto_resume(job, run, log=lines.append)
    seconds = time.monotonic() - t0
    assert killer.killed and summary["steps"] == steps
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith("error: learner rank 0 died (") and "last checkpoint " in lines[0], lines
    assert lines[0].endswith("auto_resume 1/1: restarting from " + str(newest_before(lines[0])))
    got = rows(tmp_path)
    assert [r["step"] for r in got] == list(range(1, steps + 1))  # the redone steps replaced, not appended
    assert "resumed from" in capfd.readouterr().out
    print(f"{lines[0]}\n{steps} steps with one learner death in {seconds:.0f} s")


def newest_before(line: str) -> str:
    """The checkpoint the failure line names: the one auto_resume must restart from."""
    return line.split("last checkpoint ", 1)[1].split(",", 1)[0]
