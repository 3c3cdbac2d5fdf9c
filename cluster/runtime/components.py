"""What the Ray and the in-process systems build alike: the sampler class of the job's backend with its engine
knobs, what the reward service reads as a completion's prompt, and the check of a weight push. No Ray here."""

from __future__ import annotations

from collections.abc import Sequence

from actors.lora_adapter import AdapterSpec
from bond.records import Completion, Prompt, Role
from cluster.config.job import JobConfig, SamplerBackend
from cluster.training.failures import JobFailure


def sampler_class(backend: SamplerBackend):
    if backend is SamplerBackend.VLLM:
        from actors.vllm_sampler import VllmSampler

        return VllmSampler
    from actors.hf_sampler import HfSampler

    return HfSampler


def sampler_kwargs(job: JobConfig) -> dict:
    """The engine knobs the chosen sampler class takes (the hf backend has no vLLM-only ones)."""
    if job.models.sampler_backend is SamplerBackend.VLLM:
        lora = job.learner.lora  # the actors serve base + pushed adapters (actors/lora_adapter.py)
        adapter = AdapterSpec(lora.r, lora.alpha, lora.target_modules) if lora is not None else None
        return {**job.engine.vllm_kwargs(), "lora": adapter}
    return {**job.engine.hf_kwargs(), "device": "cuda" if job.resources.gpus_per_actor > 0 else "cpu"}


def reward_prompts(completions: Sequence[Completion]) -> list[Prompt]:
    """What the reward service reads as each completion's prompt: the prompt row (messages, extras), not the
    policy's rendering of it; the reward model applies its own tokenizer and template."""
    return [c.source or Prompt(text=c.prompt) for c in completions]


class WeightSyncError(JobFailure):
    """A push that failed or timed out: one error line (and run.auto_resume applies), not a hang."""


def confirmed_version(role: Role, confirmed: Sequence[int], expected: int, buckets: int) -> int:
    """The version every actor of `role` now holds; an error unless all of them hold the learner's."""
    if buckets == 0:
        raise WeightSyncError(f"learner exported no {role} weights")
    if set(confirmed) != {expected}:
        raise WeightSyncError(f"{role} actors confirmed versions {list(confirmed)}, learner is at {expected}")
    return expected
