"""Learner step time at ~27 M parameters: in-process vs a Ray actor with Ray's default threads vs resources.threads.

The learner rank reserves 0.5 CPU as in configs/local.yaml, so Ray alone starts it with OMP_NUM_THREADS=1;
with resources.threads=phase (sync mode) it gets the node's cores while it learns (cluster/threads.py).
Same model, batch and learner config in all three; medians of the timed steps.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS, WARMUP = 3, 1


def _job(model: Path):
    from cluster.job_config import JobConfig, ModelsConfig, ResourcesConfig
    from learner.config import LearnerConfig

    return JobConfig(models=ModelsConfig(policy=str(model), build_tiny=False),
                     learner=LearnerConfig(zero_stage=2, micro_batch_prompts=16, bucket_bytes=64 << 20),
                     resources=ResourcesConfig(cpus_per_learner=0.5, cpus_per_actor=0.5))


def _steps(step) -> float:
    from bench.bench_learner import _batch

    times = []
    for s in range(WARMUP + STEPS):
        t0 = time.perf_counter()
        step(_batch(s))
        times.append(time.perf_counter() - t0)
    return statistics.median(times[WARMUP:])


def main() -> None:
    import ray
    import torch

    from bench.bench_actors import _big_model
    from cluster.system import LearnerRank, _free_port
    from cluster.threads import job_threads, thread_env

    with tempfile.TemporaryDirectory() as tmp:
        model = _big_model(Path(tmp))
        job = _job(model)
        threads = job_threads(job)
        print(f"learner step, random 27M Llama, 32 prompts (1 policy + 2 anchor samples), ZeRO-2, "
              f"median of {STEPS}; torch threads in-process {torch.get_num_threads()}, "
              f"phase policy gives the learner {threads.learner}", flush=True)
        inproc = LearnerRank(job, str(model), 0, 1, "127.0.0.1", _free_port()[1])
        t_in = _steps(inproc.step)
        del inproc
        print(f"  in-process               {t_in:6.2f} s/step", flush=True)
        ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        try:
            results = {}
            for label, n in (("Ray, Ray's default", None), ("Ray, resources.threads", threads.learner)):
                env = {} if n is None else {"runtime_env": {"env_vars": thread_env(n)}}
                rank = ray.remote(LearnerRank).options(num_cpus=0.5, **env).remote(
                    job, str(model), 0, 1, "127.0.0.1", _free_port()[1], threads=n)
                got = ray.get(rank.threads.remote())
                results[label] = _steps(lambda b, r=rank: ray.get(r.step.remote(b)))
                print(f"  {label:24s} {results[label]:6.2f} s/step  ({got} torch threads)  "
                      f"/ in-process {results[label] / t_in:.2f}x", flush=True)
                ray.kill(rank)
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
