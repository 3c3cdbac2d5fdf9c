"""Faults in the middle of a real job on a real local Ray: the policy sampler's process and a reward replica's
process are SIGKILLed, and the run still finishes every step, each exactly once in stats.jsonl, with the
restart counted in ray_jbond_actor_restarts_total and logged in one line. The faults a job cannot survive (a
learner rank killed in the middle of a weight push, a sampler that dies more often than allowed) end it in one
`error:` line with exit code 3, its checkpoints kept."""

import json
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import ray
from ray.util.state import list_actors

from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.main import main, run
from cluster.runtime.ports import free_port
from cluster.training import checkpoints
from cluster.training.failures import run_with_auto_resume

ROOT = Path(__file__).resolve().parents[2]


def base_overrides(tmp_path: Path, tiny_dir: Path) -> dict:
    return {
        "reward.http_port": free_port(),
        "models.policy": tiny_dir / "policy",
        "reward.path_or_name": tiny_dir / "reward",
        "prompts.path": ROOT / "configs" / "review_prompts.jsonl",
        "run.run_dir": tmp_path,
        "run.progress": "false",
        "run.show_samples": 0,
    }


def job_config(tmp_path: Path, tiny_dir: Path, **overrides) -> JobConfig:
    data = loading.load_document(ROOT / "configs" / "smoke.yaml")
    for key, value in {**base_overrides(tmp_path, tiny_dir), **overrides}.items():
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


def policy_actor(info) -> bool:
    return (info.name or "").endswith("-policy-0")


def reward_replica(info) -> bool:
    return info.class_name.startswith("ServeReplica:")


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


def main_argv(tmp_path: Path, tiny_dir: Path, **overrides) -> list[str]:
    """`python -m cluster.main` arguments of job_config's job."""
    pairs = {**base_overrides(tmp_path, tiny_dir), **overrides}
    return ["--config", str(ROOT / "configs" / "smoke.yaml")] + [f"--set={k}={v}" for k, v in pairs.items()]


class KillInside(threading.Thread):
    """SIGKILLs the process of the live actor matched while the driver's main thread is inside `function` for
    the `nth` time: the stack is polled every millisecond, so the kill lands in the middle of that call. With
    `pause`, the process of the actor it matches is SIGSTOPped just before (and left so). With `after_s`, the kill
    waits that long into the call (and is skipped if the call returned meanwhile): for a target that must be busy
    with the call's work when it dies, not merely about to receive it."""

    def __init__(self, function: str, nth: int, match, pause=None, after_s: float = 0.0):
        super().__init__(daemon=True)
        self.function, self.nth, self.match, self.pause, self.killed, self.at = function, nth, match, pause, [], None
        self.after_s = after_s

    def inside(self) -> bool:
        frame = sys._current_frames().get(threading.main_thread().ident)
        while frame is not None and frame.f_code.co_name != self.function:
            frame = frame.f_back
        return frame is not None

    def run(self) -> None:
        deadline, target, paused = time.monotonic() + 240, None, None
        while target is None and time.monotonic() < deadline:  # the state API takes too long to ask mid-call
            try:
                target, paused = alive_pid(self.match), self.pause and alive_pid(self.pause)
            except AssertionError:  # not started yet
                time.sleep(0.5)
        entries, was_inside = 0, False
        while target and entries < self.nth and time.monotonic() < deadline:
            now = self.inside()
            entries += now and not was_inside
            was_inside = now
            time.sleep(0.001)
        if target and entries == self.nth and self.after_s:
            time.sleep(self.after_s)
            entries = entries if self.inside() else 0
        if target and entries == self.nth:
            if paused:
                os.kill(paused[1], signal.SIGSTOP)
            os.kill(target[1], signal.SIGKILL)
            self.killed.append(target[0])
            self.at = time.monotonic()


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
    killer = KillAt(tmp_path, 2, policy_actor, reward_replica)
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


def ray_metric(port: int, name: str, *labels: str) -> float:
    """The sum of metric `name` over the series with every label of `labels`, once Ray exported it (0: never)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        lines = [x for x in text.splitlines() if x.startswith(name + "{") and all(label in x for label in labels)]
        if lines:
            return sum(float(x.rsplit(" ", 1)[1]) for x in lines)
        time.sleep(1)
    return 0.0


def error_lines(capfd) -> list[str]:
    """The job's `error: ` lines on stderr (the workers' log lines go there too, under this test's Ray)."""
    return [line for line in capfd.readouterr().err.splitlines() if line.startswith("error: ")]


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return stopped.value.code


@pytest.mark.timeout(300)
@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_learner_rank_killed_mid_push_stops_the_job_in_seconds(metrics_ray, tiny_dir, tmp_path, capfd, transport):
    """Rank 1 of a ZeRO-3 learner dies while rank 0 gathers the buckets the driver is pushing: the job ends within
    seconds, in one line. Rank 0 is paused (SIGSTOP) as it is, from the driver's side, when it waits in an NCCL
    collective for the dead rank until learner.timeout_s (30 min), where gloo fails at once. Over the collective,
    the engines are left waiting in their broadcast for rank 0; they must not hold up the exit."""
    sets = {"run.steps": 4, "run.checkpoint_every": 1, "resources.learner_ranks": 2, "learner.zero_stage": 3}
    sets["run.weight_sync"] = transport
    push = "push_weights_collective" if transport == "collective" else "push_weights"
    rank_0, rank_1 = (lambda a, r=r: (a.name or "").endswith(f"-learner-{r}") for r in (0, 1))
    killer = KillInside(push, 2, rank_1, pause=rank_0)
    killer.start()
    code, ended = exit_code(main_argv(tmp_path, tiny_dir, **sets)), time.monotonic()
    err = error_lines(capfd)
    assert killer.killed and code == 3, (code, err)
    seconds = ended - killer.at
    assert len(err) == 1 and err[0].startswith("error: learner rank 1 died ("), err
    checkpoint = tmp_path / "checkpoints" / "step_0000001"
    assert err[0].endswith(f"last checkpoint {checkpoint}, continue with --resume"), err
    assert checkpoints.newest_valid(tmp_path)[0] == checkpoint  # kept
    assert seconds < 60, seconds
    print(f"{err[0]}\nthe job ended {seconds:.1f} s after the kill")


def slow_reward_job(tmp_path: Path, tiny_dir: Path, **overrides) -> JobConfig:
    return job_config(
        tmp_path,
        tiny_dir,
        **{"reward.kind": "function", "reward.path_or_name": "tests.component.tiny_reward_functions:slow_review"},
        **overrides,
    )


@pytest.mark.timeout(300)
def test_reward_replica_killed_mid_scoring_is_retried_and_the_step_trained_once(metrics_ray, tiny_dir, tmp_path):
    steps = 3
    job = slow_reward_job(tmp_path, tiny_dir, **{"run.steps": steps, "run.checkpoint_every": 0})
    # half a second in: the step's scoring requests are running on the replica then (a request Serve had only
    # queued when its replica died goes to the replacement unseen, and no failed call is counted)
    killer = KillInside("score_with_retries", 2, reward_replica, after_s=0.5)
    killer.start()
    summary = run(job)
    assert killer.killed and summary["steps"] == steps
    assert [r["step"] for r in rows(tmp_path)] == list(range(1, steps + 1))  # step 2 trained once
    labels = 'component="reward_service"', f'run="{tmp_path.name}"'  # this run's: the module's tests share Ray
    failures = ray_metric(metrics_ray, "ray_jbond_errors_total", *labels)
    assert failures >= 1, failures
    print(f"killed {killer.killed} while scoring step 2; {failures:g} failed scoring call(s) retried")


@pytest.mark.timeout(300)
def test_sampler_killed_more_often_than_max_actor_restarts_ends_the_job_in_one_line(
    metrics_ray, tiny_dir, tmp_path, capfd
):
    sets = {"run.steps": 6, "run.checkpoint_every": 1, "resources.max_actor_restarts": 1}
    # the second kill once step 3 is in: the driver has brought the actor back from the first by then
    first, second = KillAt(tmp_path, 2, policy_actor), KillAt(tmp_path, 3, policy_actor)
    first.start()
    second.start()
    code = exit_code(main_argv(tmp_path, tiny_dir, **sets))
    err = error_lines(capfd)
    assert first.killed and second.killed and code == 3, (code, err)
    assert len(err) == 1 and err[0].startswith("error: policy actor 0 died "), err
    assert "resources.max_actor_restarts=1" in err[0], err
    assert checkpoints.newest_valid(tmp_path)[0] is not None  # kept
    print(err[0])
