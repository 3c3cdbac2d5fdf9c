"""Where a run's outputs go: run.run_dir made absolute, against a storage root under `ray job submit`.

Why: `ray job submit --working-dir .` runs the driver inside Ray's temporary copy of the working directory
(<temp dir>/session_*/runtime_resources/working_dir_files/...), which Ray deletes with the session. A relative
run.run_dir there would put stats, episodes, checkpoints and the final policy where nobody looks and nothing
lasts. Like Ray Train's `storage_path`, the user names a storage root once (run.storage_path, or the
environment variable JBOND_STORAGE_PATH, e.g. in the job's runtime_env), and relative run dirs resolve
against it; a submitted job with neither is refused at start-up. Local runs keep resolving against the
current directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bond.config import ConfigError
from cluster.config.job import JobConfig

STORAGE_ENV = "JBOND_STORAGE_PATH"
# Ray sets this in the environment of every `ray job submit` driver (Ray's runtime_env constants).
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Part of the path of Ray's unpacked copy of a job's working_dir (Ray's runtime_env working_dir module).
RAY_WORKING_DIR_COPY = "working_dir_files"


def submitted_job(environ: Mapping[str, str], cwd: Path) -> str:
    """A description of the `ray job submit` job this process is the driver of, or '' if it is not one."""
    if RAY_WORKING_DIR_COPY in cwd.parts:
        return f"its working directory {cwd} is Ray's temporary copy of the job's working_dir"
    raw = environ.get(RAY_JOB_CONFIG_ENV)
    if raw is None:
        return ""
    try:
        submission_id = json.loads(raw).get("metadata", {}).get("job_submission_id", "")
    except (ValueError, AttributeError):
        submission_id = ""
    return f"it runs as a `ray job submit` job{f' ({submission_id})' if submission_id else ''}"


def storage_root(job: JobConfig, environ: Mapping[str, str]) -> Path | None:
    """run.storage_path, else $JBOND_STORAGE_PATH, else None; must be absolute (a relative root has the very
    problem it is meant to solve)."""
    if job.run.storage_path:
        name, value = "run.storage_path", job.run.storage_path
    elif environ.get(STORAGE_ENV):
        name, value = f"run.storage_path (from ${STORAGE_ENV})", environ[STORAGE_ENV]
    else:
        return None
    root = Path(value).expanduser()
    if not root.is_absolute():
        raise ConfigError(
            f"{name}: must be an absolute path (a directory every node of the cluster can write), got {value!r}"
        )
    return root


def resolve_run_dir(job: JobConfig, environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """The absolute directory the run writes to. Raises ConfigError (naming run.run_dir) for a relative run dir
    in a submitted job with no storage root."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    run_dir = Path(job.run.run_dir).expanduser()
    root = storage_root(job, environ)
    if run_dir.is_absolute():
        return run_dir
    if root is not None:
        return root / run_dir
    where = submitted_job(environ, cwd)
    if where:
        raise ConfigError(
            f"run.run_dir: {str(run_dir)!r} is relative and {where}: its outputs would land in {cwd / run_dir}, "
            f"which Ray deletes with the session. Set a storage root once (--set run.storage_path=/shared/jbond, "
            f"or {STORAGE_ENV}=/shared/jbond in the job's runtime_env env_vars), or give an absolute run.run_dir"
        )
    return cwd / run_dir


def with_resolved_run_dir(
    job: JobConfig, environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> JobConfig:
    """The same job with run.run_dir absolute (so every later message and config.yaml name the real place)."""
    return dataclasses.replace(job, run=dataclasses.replace(job.run, run_dir=resolve_run_dir(job, environ, cwd)))


def make_run_dir(run_dir: Path) -> None:
    """Create run.run_dir and write a probe file there: a place the run cannot write (a read-only or virtual
    file system, a path under a regular file) is refused at start-up, not at the first output after Ray started."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise ConfigError(f"run.run_dir: cannot write to {run_dir}: {getattr(e, 'strerror', None) or e}") from None


def outputs_report(run_dir: Path) -> str:
    """The final lines of a run: the absolute path of each output that exists."""
    run_dir = run_dir.resolve()
    lines = [f"run dir: {run_dir}"]
    for name, what in (
        ("config.yaml", "the config as run"),
        ("stats.jsonl", "one StepStats per step"),
        ("eval.jsonl", "held-out evaluations"),
        ("episodes", "RLDS Parquet rows per step"),
        ("checkpoints", "resume with --resume"),
        ("exports", "periodic HF exports"),
        ("final_policy", "HF safetensors policy"),
        ("tensorboard", "tensorboard --logdir"),
        ("plots", "reward / KL plots"),
        ("summary.txt", "samples and the summary table"),
    ):
        path = run_dir / name
        if path.exists():
            lines.append(f"  {str(path) + ('/' if path.is_dir() else ''):<{len(str(run_dir)) + 16}} {what}")
    return "\n".join(lines)
