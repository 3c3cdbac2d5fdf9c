"""Prompts/s of the full system (Ray: vLLM actors, Serve reward service, DeepSpeed learner) vs a naive
single-process loop (HF generate, in-process reward model, plain-torch learner), on the same tiny model,
batch and training loop, one after the other in one run; plus the per-step split sample/score/learn/sync.

Both run `cluster.loop.train` unchanged; only the placement differs. Steps after the first two are timed.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path

from cluster import config_loading
from cluster.job_config import JobConfig, SamplerBackend
from cluster.loop import LoopState, StepRecord, train
from cluster.prompts import PromptCursor, load_prompts
from cluster.tiny import build

ROOT = Path(__file__).resolve().parents[1]
WARMUP, TIMED, PROMPTS_PER_STEP = 2, 8, 32


def job_config(tiny: Path) -> JobConfig:
    data = config_loading.load_document(ROOT / "configs" / "local.yaml")
    for assignment in (f"models.policy={tiny / 'policy'}", f"reward.path_or_name={tiny / 'reward'}",
                       f"prompts.path={ROOT / 'configs' / 'review_prompts.jsonl'}",
                       f"algorithm.prompts_per_step={PROMPTS_PER_STEP}", f"run.steps={WARMUP + TIMED}",
                       "run.progress=false", "reward.http_port=18931"):
        config_loading.apply_override(data, assignment)
    return config_loading.build(JobConfig, data)


def measure(job: JobConfig, system) -> tuple[float, dict[str, float]]:
    records: list[StepRecord] = []
    stamps: list[float] = []

    def on_step(rec: StepRecord) -> None:
        records.append(rec)
        stamps.append(time.perf_counter())

    train(job, system, load_prompts(job.prompts).prompts, LoopState(0, PromptCursor()), on_step)
    seconds = stamps[-1] - stamps[WARMUP - 1]
    split = {phase: statistics.mean(r.seconds[phase] for r in records[WARMUP:]) for phase in records[0].seconds}
    return TIMED * PROMPTS_PER_STEP / seconds, split


def main() -> None:
    import ray

    from cluster.in_process_system import InProcessSystem
    from cluster.system import System

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    tiny = build(ROOT / "artifacts" / "tiny")
    job = job_config(tiny)

    naive_job = dataclasses.replace(
        job, models=dataclasses.replace(job.models, sampler_backend=SamplerBackend.HF),
        learner=dataclasses.replace(job.learner, zero_stage=0))
    naive = InProcessSystem(naive_job)
    try:
        naive_rate, naive_split = measure(naive_job, naive)
    finally:
        naive.shutdown()

    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    system = System(job)
    try:
        full_rate, full_split = measure(job, system)
    finally:
        system.shutdown()
        ray.shutdown()

    print(f"tiny policy, {PROMPTS_PER_STEP} prompts/step (1 policy + {job.algorithm.n} anchor samples, "
          f"<= {job.sampling.max_new_tokens} tokens), {TIMED} timed steps after {WARMUP}")
    for name, rate, split in (("naive single process (HF, torch)", naive_rate, naive_split),
                              ("full system (Ray, vLLM, Serve, DeepSpeed)", full_rate, full_split)):
        parts = "  ".join(f"{k} {v:.3f}s" for k, v in split.items())
        print(f"  {name:<44} {rate:7.1f} prompts/s   per step: {parts}")
    print(f"full / naive: {full_rate / naive_rate:.2f}x")


if __name__ == "__main__":
    main()
