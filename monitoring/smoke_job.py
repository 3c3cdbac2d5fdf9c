"""The command line of a J-BOND job for `ray job submit`, used by `make monitor`, the monitoring test and the
dashboard screenshot: the real entry point, so what they watch is what users run."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def job_entrypoint(config: str | Path, overrides: dict[str, object] | None = None) -> str:
    """A shell command: runs from the checkout (configs/ and artifacts/ paths are relative to it) with this
    interpreter, so the job needs no working_dir upload and sees the same packages as the caller."""
    args = [sys.executable, "-m", "cluster.main", "--config", str(config)]
    for key, value in (overrides or {}).items():
        args += ["--set", f"{key}={value}"]
    return f"cd {shlex.quote(str(ROOT))} && exec {shlex.join(args)}"


def smoke_entrypoint(run_dir: Path | str, steps: int, overrides: dict[str, object] | None = None) -> str:
    """configs/smoke.yaml for `steps` steps into run_dir, without a progress bar."""
    return job_entrypoint(
        "configs/smoke.yaml", {"run.steps": steps, "run.run_dir": run_dir, "run.progress": "false", **(overrides or {})}
    )
