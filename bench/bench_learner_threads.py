"""Learner step time at ~27 M parameters: in-process vs a Ray actor with Ray's default threads vs resources.threads.

The learner rank reserves 0.5 CPU as in configs/local.yaml, so Ray alone starts it with OMP_NUM_THREADS=1;
with resources.threads=phase (sync mode) it gets the node's cores while it learns (cluster/runtime/threads.py).
Same model, batch and learner config in all three; medians of the timed steps.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS, WARMUP = 4, 1


def _job(model: Path):
    from bond.config import BondConfig
    from cluster.config.job import JobConfig, Mode, ModelsConfig, ResourcesConfig, RunConfig
    from learner.config import LearnerConfig

    return JobConfig(
        models=ModelsConfig(policy=str(model)),
        algorithm=BondConfig(prompts_per_step=32, lr=1e-4, warmup_steps=0),
        learner=LearnerConfig(zero_stage=2, micro_batch_prompts=16, bucket_bytes=64 << 20),
        resources=ResourcesConfig(cpus_per_learner=0.5, cpus_per_actor=0.5),
        run=RunConfig(mode=Mode.SYNC),  # the phase policy's counts are sync mode's
    )


def _interleaved(steps: dict) -> dict[str, float]:
    """Median step seconds of each runner, stepped in turn on the same batches (load spikes hit all alike)."""
    from bench.bench_learner import _batch

    times: dict[str, list[float]] = {name: [] for name in steps}
    for s in range(WARMUP + STEPS):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(_batch(s))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t[WARMUP:]) for name, t in times.items()}


def main() -> None:
    import ray
    import torch

    from bench.bench_actors import _big_model
    from cluster.runtime.learner_rank import LearnerRank
    from cluster.runtime.ports import free_port
    from cluster.runtime.threads import job_threads, thread_env

    with tempfile.TemporaryDirectory() as tmp:
        model = _big_model(Path(tmp))
        job = _job(model)
        threads = job_threads(job)
        print(
            f"learner step, random 27M Llama, 32 prompts (1 policy + 2 anchor samples), ZeRO-2, "
            f"median of {STEPS}; torch threads in-process {torch.get_num_threads()}, "
            f"phase policy gives the learner {threads.learner}",
            flush=True,
        )
        inproc = LearnerRank(job, str(model), 0, 1, "127.0.0.1", free_port())
        ray.init(  # as the job does: the workers' logs stay in Ray's files
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        )
        try:
            steps, got = {"in-process": inproc.step}, {"in-process": torch.get_num_threads()}
            for label, n in (("Ray, Ray's default", None), ("Ray, resources.threads", threads.learner)):
                env = {} if n is None else {"runtime_env": {"env_vars": thread_env(n)}}
                rank = (
                    ray.remote(LearnerRank)
                    .options(num_cpus=0.5, **env)
                    .remote(job, str(model), 0, 1, "127.0.0.1", free_port(), threads=n)
                )
                got[label] = ray.get(rank.threads.remote())
                steps[label] = lambda b, r=rank: ray.get(r.step.remote(b))
            results = _interleaved(steps)
            for label, seconds in results.items():
                print(
                    f"  {label:24s} {seconds:6.2f} s/step  ({got[label]} torch threads)  "
                    f"/ in-process {seconds / results['in-process']:.2f}x",
                    flush=True,
                )
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
