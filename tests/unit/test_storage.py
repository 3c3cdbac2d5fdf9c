"""Where outputs go: run.run_dir against run.storage_path / $JBOND_STORAGE_PATH, refused in a `ray job submit`
job with neither, against the current directory locally."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bond.config import ConfigError
from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.config.storage import RAY_JOB_CONFIG_ENV, STORAGE_ENV, outputs_report, resolve_run_dir

ROOT = Path(__file__).resolve().parents[2]
# What Ray puts in a submitted driver's environment (ray/dashboard/modules/job/job_supervisor.py).
SUBMITTED = {RAY_JOB_CONFIG_ENV: json.dumps({"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_1"}})}
RAY_COPY = Path("/tmp/ray/session_2026/runtime_resources/working_dir_files/_ray_pkg_0123")


def job(**run) -> JobConfig:
    return loading.build(JobConfig, {"run": run})


def test_local_relative_run_dir_resolves_against_the_current_directory(tmp_path):
    assert resolve_run_dir(job(run_dir="runs/a"), environ={}, cwd=tmp_path) == tmp_path / "runs/a"


def test_absolute_run_dir_is_kept_everywhere(tmp_path):
    assert resolve_run_dir(job(run_dir=str(tmp_path / "r")), environ=SUBMITTED, cwd=RAY_COPY) == tmp_path / "r"


@pytest.mark.parametrize("environ,cwd", [(SUBMITTED, Path("/home/me/jbond")), ({}, RAY_COPY)])
def test_submitted_job_with_relative_run_dir_and_no_storage_root_is_refused(environ, cwd):
    with pytest.raises(ConfigError, match=r"^run\.run_dir: 'runs/local' is relative") as refused:
        resolve_run_dir(job(), environ=environ, cwd=cwd)
    assert "run.storage_path" in str(refused.value) and STORAGE_ENV in str(refused.value)


def test_storage_root_from_config_or_environment(tmp_path):
    from_config = job(run_dir="runs/a", storage_path=str(tmp_path / "cfg"))
    environ = {**SUBMITTED, STORAGE_ENV: str(tmp_path / "env")}
    assert resolve_run_dir(from_config, environ=environ, cwd=RAY_COPY) == tmp_path / "cfg/runs/a"  # config wins
    assert resolve_run_dir(job(run_dir="runs/a"), environ=environ, cwd=RAY_COPY) == tmp_path / "env/runs/a"
    # set once, it applies to local runs too (one place for a user's outputs)
    assert resolve_run_dir(job(run_dir="b"), environ={STORAGE_ENV: str(tmp_path)}, cwd=Path("/x")) == tmp_path / "b"


def test_relative_storage_root_is_refused():
    with pytest.raises(ConfigError, match=r"^run\.storage_path: must be an absolute path"):
        job(storage_path="shared/jbond")
    with pytest.raises(ConfigError, match=rf"^run\.storage_path \(from \${STORAGE_ENV}\): must be an absolute"):
        resolve_run_dir(job(), environ={STORAGE_ENV: "shared"}, cwd=Path("/x"))


def test_cli_refuses_at_start_up_with_a_config_error(tmp_path):
    """`python -m cluster.main` as Ray's job supervisor would start it: exit 2 before Ray or a model starts."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **SUBMITTED}
    out = subprocess.run(
        [sys.executable, "-m", "cluster.main", "--config", "configs/smoke.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(
        "config error: run.run_dir: 'runs/smoke' is relative and it runs as a `ray job submit` job (raysubmit_1)"
    ), out.stderr


def test_outputs_report_lists_absolute_paths_of_what_exists(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "stats.jsonl").write_text("{}\n")
    lines = outputs_report(tmp_path).splitlines()
    assert lines[0] == f"run dir: {tmp_path}"
    assert [line.split()[0] for line in lines[1:]] == [f"{tmp_path}/stats.jsonl", f"{tmp_path}/checkpoints/"]
