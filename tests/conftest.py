"""Shared fixtures: the tiny models (built offline once per checkout) and the CPU vLLM environment."""

import os
from pathlib import Path

import pytest

# vLLM on CPU: engines in the calling process, a 1 GiB KV cache (../shared/STACK.md). Set before any import of vllm.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every Ray the tests start (ray.init, `ray start` heads) inherits Serve's proxy allowance (see cluster/system.py).
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """artifacts/tiny with tokenizer/, policy/, reward/, nli/ (see cluster/tiny.py)."""
    from cluster.tiny import build

    return build(ROOT / "artifacts" / "tiny")


def pytest_collection_modifyitems(config, items):
    """gpu tests are skipped unless CUDA is there."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
