"""`ray job submit` of the smoke job to a head started with `ray start`, as README documents it (the integration
tests that run a job outside the test process share it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from monitoring.local_ray_head import LocalRayHead

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def venv_head(**kwargs) -> LocalRayHead:
    """A LocalRayHead (not started) with this venv's bin first on PATH, as for a user with the environment
    active: a submitted job's `python` is this one."""
    head = LocalRayHead(**kwargs)
    head.env["PATH"] = f"{BIN}:{os.environ.get('PATH', '')}"
    return head


def submit_smoke_job(head: LocalRayHead, storage: Path, overrides: list[str], timeout_s: float) -> str:
    """`ray job submit --working-dir ROOT -- python -m cluster.main --config configs/smoke.yaml --set ...`, with
    JBOND_STORAGE_PATH=storage; asserts the job succeeded and returns its output (the job's log streamed back)."""
    runtime_env = json.dumps({"env_vars": {"JBOND_STORAGE_PATH": str(storage)}})
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        f"--address={head.dashboard_url}",
        "--working-dir",
        str(ROOT),
        "--runtime-env-json",
        runtime_env,
        "--",
        "python",
        "-m",
        "cluster.main",
        "--config",
        "configs/smoke.yaml",
    ]
    for o in overrides:
        cmd += ["--set", o]
    for _ in range(30):  # the head answers before its job agent registers: "No available agent" is retried
        out = subprocess.run(cmd, env=head.env, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
        if "No available agent" not in out.stdout + out.stderr:
            break
        time.sleep(2)
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "succeeded" in log, log[-4000:]
    return log
