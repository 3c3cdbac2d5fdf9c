"""Colocated mode on CPU: VllmSampler.sleep() gives the KV cache's memory back to the OS and wake_up() serves
exactly as before (vLLM's own sleep mode does not exist on CPU; actors/kv_cache_release.py)."""

from __future__ import annotations

import os

import pytest

from actors.sampling import SamplingSettings
from actors.vllm_sampler import VllmSampler
from bond.records import Role
from demo.review_grammar import PROMPTS


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(180)
def test_sleep_releases_the_kv_cache_and_wake_serves_the_same_samples(tiny_dir):
    sampler = VllmSampler(str(tiny_dir / "policy"), Role.POLICY, max_model_len=64)
    try:
        settings = SamplingSettings(max_new_tokens=16, seed=3)
        prompts = list(PROMPTS[:8])
        before = sampler.generate(prompts, 2, settings)
        kv_bytes = int(float(os.environ["VLLM_CPU_KVCACHE_SPACE"]) * 2**30)
        rss_awake = rss_bytes()
        released = sampler.sleep()
        rss_asleep = rss_bytes()
        # the whole reserved cache was resident (vLLM zero-fills it); at least 90 % of it leaves the process
        assert rss_awake - rss_asleep >= 0.9 * kv_bytes, (rss_awake, rss_asleep)
        assert released == pytest.approx(rss_awake - rss_asleep, rel=0.05), released  # what sleep() reports
        sampler.wake_up()
        after = sampler.generate(prompts, 2, settings)
        assert [c.token_ids for c in after] == [c.token_ids for c in before]
        assert [lp for c in after for lp in c.logprobs] == pytest.approx(
            [lp for c in before for lp in c.logprobs], abs=1e-5
        )
        # sampling touched only the blocks it used: far less than the cache comes back
        assert rss_bytes() - rss_asleep < 0.1 * kv_bytes
        print(
            f"RSS awake {rss_awake / 2**20:.0f} MiB, asleep {rss_asleep / 2**20:.0f} MiB, "
            f"after the next round {rss_bytes() / 2**20:.0f} MiB"
        )
    finally:
        sampler.close()
