"""The local Ray cluster the in-process integration tests share."""

from pathlib import Path

import pytest
import ray

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def _module_ray():
    yield
    ray.shutdown()


@pytest.fixture
def local_ray(_module_ray, tiny_dir):
    """A local Ray for the test: started once per module, and again if a test in between shut it down
    (test_ray_job_submit disconnects the driver to submit to a head of its own)."""
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=True, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield
