"""Weight sync: the object-store push vs the collective (gloo) push, learner actor -> vLLM actor, vs a memcpy.

Both transports run between real Ray actors (a learner rank and a vLLM sampler, as in a job) and include
everything a job's push includes: export (bucketing), transport, validation, in-place reload, version
confirmation. Measured for the tiny policy and a random ~27 M-parameter Llama; the ratios decide
`run.weight_sync: auto` (cluster/weight_sync.py choose_method). The LoRA rows push adapters only (learner.lora,
r=8 on every projection) into an engine serving base + adapter as vLLM LoRA requests; every row also reports
the engine's sampling throughput with what it serves (LoRA adds the adapter matmuls to every layer).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 5


def _one_model(model_dir: Path, label: str, lora: bool = False) -> None:
    import ray

    from actors.lora_adapter import AdapterSpec
    from actors.sampling import SamplingSettings
    from actors.vllm_sampler import VllmSampler
    from bond.records import Role
    from cluster.job_config import JobConfig, ModelsConfig
    from cluster.system import SAMPLER_ENV, LearnerRank, _free_port
    from cluster.weight_sync import open_weight_group, push_weights, push_weights_collective
    from learner.config import LearnerConfig, LoraConfig

    adapters = LoraConfig(r=8, alpha=16.0) if lora else None
    job = JobConfig(models=ModelsConfig(policy=str(model_dir), build_tiny=False),
                    learner=LearnerConfig(zero_stage=0, micro_batch_prompts=8, bucket_bytes=64 << 20, lora=adapters))
    addr, port = _free_port()
    learner = ray.remote(LearnerRank).options(num_cpus=1).remote(job, str(model_dir), 0, 1, "127.0.0.1", port)
    actor = ray.remote(VllmSampler).options(num_cpus=1, runtime_env={"env_vars": SAMPLER_ENV}).remote(
        str(model_dir), Role.POLICY, max_model_len=64,
        lora=AdapterSpec(adapters.r, adapters.alpha, adapters.target_modules) if adapters else None)
    ray.get([learner.__ray_ready__.remote(), actor.__ray_ready__.remote()])
    open_weight_group([learner], [actor], Role.POLICY, "gloo", 120.0)
    nbytes = ray.get(learner.model_bytes.remote())
    src = torch.randn(nbytes // 4)
    dst = torch.empty_like(src)
    best = {"object_store": float("inf"), "collective": float("inf"), "memcpy": float("inf")}
    runs = {"object_store": lambda: push_weights([learner], [actor], Role.POLICY),
            "collective": lambda: push_weights_collective([learner], [actor], Role.POLICY, 120.0),
            "memcpy": lambda: dst.copy_(src)}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(REPEATS):  # interleaved, best of each: noise on a shared machine only slows a run down
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    o, c, m = best["object_store"], best["collective"], best["memcpy"]
    settings = SamplingSettings(max_new_tokens=32, seed=0)
    prompts = ["the movie was", "the plot"] * 32
    ray.get(actor.generate.remote(prompts, 1, settings))  # warm-up
    t0, tokens = time.perf_counter(), 0
    for _ in range(3):
        tokens += sum(len(c.token_ids) for c in ray.get(actor.generate.remote(prompts, 1, settings)))
    rate = tokens / (time.perf_counter() - t0)
    print(f"  {label}: {nbytes / 1e6:.3f} MB  object_store {o * 1e3:.1f} ms  collective {c * 1e3:.1f} ms  "
          f"memcpy {m * 1e3:.2f} ms   object_store/memcpy {o / m:.0f}x  collective/memcpy {c / m:.0f}x  "
          f"collective/object_store {c / o:.2f}   sampling {rate:.0f} tok/s", flush=True)
    ray.kill(actor)
    ray.kill(learner)


def main() -> None:
    import ray

    from bench.bench_actors import _big_model
    from cluster.system import SERVE_PROXY_ENV
    from cluster.tiny import build

    tiny = build(ROOT / "artifacts" / "tiny") / "policy"
    ray.init(num_cpus=4, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **SERVE_PROXY_ENV}})
    try:
        print("weight push learner actor -> vLLM actor (export, transport, validation, reload, confirmation), "
              f"best of {REPEATS}, fp32:", flush=True)
        _one_model(tiny, "tiny policy")
        _one_model(tiny, "tiny policy, LoRA r=8", lora=True)
        with tempfile.TemporaryDirectory() as tmp:
            big = _big_model(Path(tmp))
            _one_model(big, "random 27M Llama")
            _one_model(big, "random 27M Llama, LoRA r=8", lora=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
