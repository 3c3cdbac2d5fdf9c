"""The command line of a short J-BOND job (configs/smoke.yaml) for `ray job submit`, used by the monitoring
test and the dashboard screenshot: the real entry point, so what they watch is what users run."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def smoke_entrypoint(run_dir: Path, steps: int, overrides: dict[str, object] | None = None) -> str:
    """A shell command: runs from the checkout (configs/ and artifacts/ paths are relative to it) with this
    interpreter, so the job needs no working_dir upload and sees the same packages as the caller."""
    sets = {"run.steps": steps, "run.run_dir": run_dir, "run.progress": "false", **(overrides or {})}
    args = [sys.executable, "-m", "cluster.main", "--config", "configs/smoke.yaml"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return f"cd {shlex.quote(str(ROOT))} && exec {shlex.join(args)}"
