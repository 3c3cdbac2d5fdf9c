"""The loop, the roles it drives and the in-process system import without Ray: Ray is imported only where roles
are wired (cluster/runtime/'s Ray modules, cluster/main.py's run, cluster/outputs/metrics.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

IMPORTS_WITHOUT_RAY = """
import sys
sys.modules["ray"] = None  # any `import ray` (or ray.x) now raises ImportError
import cluster.core
import cluster.training.loop
import cluster.runtime.in_process
print("imported without ray")
"""


def test_loop_and_in_process_system_import_without_ray():
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_WITHOUT_RAY], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "imported without ray"
