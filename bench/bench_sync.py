"""Weight sync, learner actor -> vLLM actors, vs a memcpy of one model's bytes.

Every push runs between real Ray actors (a learner rank, vLLM samplers) and includes everything a job's push
includes: export (bucketing), transport, validation, in-place reload, version confirmation. Rows:
- object_store / collective: the policy alone, by each transport (they decide `run.weight_sync: auto`).
- step sync, learner pushes both / collective, both: what a step cost before the actor-side EMA: the policy
  to a policy actor and the learner's anchor to an anchor actor (two models; object store / gloo).
- step sync, anchor follows: one policy push read by the policy actor AND an anchor actor that applies the EMA
  itself (run.anchor_ema_on_actors; actors/weight_ema.py). The learner's version is advanced between pushes
  without a step (the EMA and the push cost the same either way).
- reload only: the engine's in-place apply of a model already in the actor (the floor of any push): plain
  weights (the default on CPU: one copy into the parameters, actors/vllm_worker_extension.py) and, side by side,
  `plain_weights=False` (vLLM's layerwise reload, which re-packs every linear layer for its oneDNN kernels).
- ..., packed: the same pushes into actors built with plain_weights=False (what a push cost before).
- actor breakdown: the pieces of an anchor-follows push measured inside the actors on the whole model: validation
  (WeightStaging.check), the EMA step, the engine apply (plain / packed), and the learner's export (its buckets
  filled and packed, without the object store's copy or Ray's round trips). Plain weights keep no host copy (they
  load any subset in place), so a policy actor's push is validation plus the apply; an anchor actor's is validation
  plus the EMA step, which moves the engine's parameters themselves (actors/vllm_weights.py).
- LoRA rows: adapters only (learner.lora, r=8 on every projection) into an engine serving base + adapter as vLLM
  LoRA requests, by each transport, with the engine's sampling throughput with what it serves (LoRA adds the
  adapter matmuls to every layer; compare with the full model's row).
JBOND_BENCH_SIZES=tiny or =medium (the random 27 M Llama) runs one size.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 5


def _advance(learner_rank) -> None:
    learner_rank._step += 1


def _served(model_dir: Path) -> dict[str, torch.Tensor]:
    """The model's weights as a push carries them (the engines serve them unchanged: pushes repeat the checkpoint)."""
    from actors.checkpoint_files import checkpoint_tensors

    return checkpoint_tensors(model_dir, torch.float32)


def _reload_only(model_dir: Path, sampler) -> float:
    tensors = _served(model_dir)
    t0 = time.perf_counter()
    sampler.llm.collective_rpc("load_checkpoint_weights", args=(tensors,))
    return time.perf_counter() - t0


def _validation(model_dir: Path, sampler) -> dict[str, float]:
    """Validation of a whole-model push, inside a policy actor (seconds)."""
    from bond.records import WeightUpdate

    update = WeightUpdate(sampler.role, sampler.weights_version + 1, _served(model_dir))
    t0 = time.perf_counter()
    sampler._staging.check(update)
    return {"validation": time.perf_counter() - t0}


def _export(learner_rank) -> float:
    """The learner's side of a policy push without Ray: every bucket filled from the parameters and packed as it is
    shipped (LearnerRank.weights, less the object store's copy and the round trips)."""
    from actors.weight_flat import FlatUpdate
    from bond.records import Role
    from learner.learner import Learner

    t0 = time.perf_counter()
    for update in Learner.weights(learner_rank, Role.POLICY, reuse=True):
        FlatUpdate.pack(update)
    return time.perf_counter() - t0


def _ema_step(sampler) -> float:
    """One EMA step of the anchor actor's fp32 anchor toward a policy (on a copy: the actor's state is kept)."""
    from bond.anchor import ema_update_

    anchor = [t.clone() for t in sampler._weights.ema.tensors.values()]
    policy = [t.clone() for t in sampler._weights.ema.tensors.values()]
    t0 = time.perf_counter()
    ema_update_(anchor, policy, sampler._weights.ema.eta)
    return time.perf_counter() - t0


def _one_model(model_dir: Path, label: str) -> None:
    import ray

    from actors.vllm_sampler import VllmSampler
    from bond.records import Role
    from cluster.config.job import JobConfig, ModelsConfig
    from cluster.runtime.learner_rank import LearnerRank
    from cluster.runtime.ports import node_port
    from cluster.runtime.samplers import SAMPLER_ENV
    from cluster.runtime.weight_sync import open_weight_group, push_weights, push_weights_collective
    from learner.config import LearnerConfig

    job = JobConfig(
        models=ModelsConfig(policy=str(model_dir)),
        learner=LearnerConfig(zero_stage=0, micro_batch_prompts=8, bucket_bytes=64 << 20),
    )
    addr, port = node_port()
    learner = ray.remote(LearnerRank).options(num_cpus=1).remote(job, str(model_dir), 0, 1, "127.0.0.1", port)
    sampler = ray.remote(VllmSampler).options(num_cpus=1, runtime_env={"env_vars": SAMPLER_ENV})
    policy = sampler.remote(str(model_dir), Role.POLICY, max_model_len=64)
    anchor = sampler.remote(str(model_dir), Role.ANCHOR, max_model_len=64)
    follower = sampler.remote(str(model_dir), Role.ANCHOR, max_model_len=64, anchor_ema=0.05)
    # the same roles with vLLM's packed kernels and layerwise reload: the "before" of plain weights, side by side
    packed_policy = sampler.remote(str(model_dir), Role.POLICY, max_model_len=64, plain_weights=False)
    packed_follower = sampler.remote(
        str(model_dir), Role.ANCHOR, max_model_len=64, anchor_ema=0.05, plain_weights=False
    )
    actors = (learner, policy, anchor, follower, packed_policy, packed_follower)
    ray.get([a.__ray_ready__.remote() for a in actors])
    open_weight_group([learner], [policy], Role.POLICY, "gloo", 120.0)
    open_weight_group([learner], [anchor], Role.ANCHOR, "gloo", 120.0)
    nbytes = ray.get(learner.model_bytes.remote())
    src = torch.randn(nbytes // 4)
    dst = torch.empty_like(src)

    def follow() -> None:
        ray.get(learner.__ray_call__.remote(_advance))
        push_weights([learner], [policy, follower], Role.POLICY)

    def in_actor(actor, fn):
        return ray.get(actor.__ray_call__.remote(fn))

    runs = {
        "object_store": lambda: push_weights([learner], [policy], Role.POLICY),
        "object_store, packed": lambda: push_weights([learner], [packed_policy], Role.POLICY),
        "collective": lambda: push_weights_collective([learner], [policy], Role.POLICY, 120.0),
        "step sync, learner pushes both": lambda: (
            push_weights([learner], [policy], Role.POLICY),
            push_weights([learner], [anchor], Role.ANCHOR),
        ),
        "step sync, collective, both": lambda: (
            push_weights_collective([learner], [policy], Role.POLICY, 120.0),
            push_weights_collective([learner], [anchor], Role.ANCHOR, 120.0),
        ),
        "step sync, anchor follows": follow,
        # right after `follow`, the same version (an EMA actor refuses a gap, so the packed pair sees them all)
        "step sync, anchor follows, packed": lambda: push_weights(
            [learner], [packed_policy, packed_follower], Role.POLICY
        ),
        "reload only": lambda: in_actor(policy, partial(_reload_only, model_dir)),
        "reload only, packed": lambda: in_actor(packed_policy, partial(_reload_only, model_dir)),
        "memcpy": lambda: dst.copy_(src),
    }
    inside = {"reload only", "reload only, packed"}  # timed in the actor
    best = dict.fromkeys(runs, float("inf"))
    for fn in runs.values():
        fn()  # warm-up
    pieces: dict[str, float] = {}
    for _ in range(REPEATS):  # interleaved, best of each: noise on a shared machine only slows a run down
        for name, fn in runs.items():
            t0 = time.perf_counter()
            out = fn()
            best[name] = min(best[name], out if name in inside else time.perf_counter() - t0)
        for name, seconds in {
            **in_actor(policy, partial(_validation, model_dir)),
            "EMA step": in_actor(follower, _ema_step),
            "learner export": in_actor(learner, _export),
        }.items():
            pieces[name] = min(pieces.get(name, float("inf")), seconds)
    m = best["memcpy"]
    print(f"  {label}: {nbytes / 1e6:.1f} MB, memcpy {m * 1e3:.2f} ms", flush=True)
    for name, seconds in best.items():
        if name != "memcpy":
            print(f"    {name:36s} {seconds * 1e3:8.1f} ms  {seconds / m:6.1f}x memcpy", flush=True)
    print(
        f"    step sync: anchor follows / learner pushes both "
        f"{best['step sync, anchor follows'] / best['step sync, learner pushes both']:.2f}; "
        f"plain / packed {best['step sync, anchor follows'] / best['step sync, anchor follows, packed']:.2f}",
        flush=True,
    )
    print(
        "    actor breakdown (whole model, in the actor): "
        + ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in pieces.items()),
        flush=True,
    )
    for a in actors:
        ray.kill(a)


def _lora_model(model_dir: Path, label: str) -> None:
    """Adapter-only pushes (object store, collective) into a policy actor serving base + adapter, and its
    sampling rate; beside it the same engine's rate serving the full model."""
    import ray

    from actors.lora_adapter import AdapterSpec
    from actors.sampling import SamplingSettings
    from actors.vllm_sampler import VllmSampler
    from bond.records import Role
    from cluster.config.job import JobConfig, ModelsConfig
    from cluster.runtime.learner_rank import LearnerRank
    from cluster.runtime.ports import node_port
    from cluster.runtime.samplers import SAMPLER_ENV
    from cluster.runtime.weight_sync import open_weight_group, push_weights, push_weights_collective
    from learner.config import LearnerConfig, LoraConfig

    adapters = LoraConfig(r=8, alpha=16.0)
    job = JobConfig(
        models=ModelsConfig(policy=str(model_dir)),
        learner=LearnerConfig(zero_stage=0, micro_batch_prompts=8, bucket_bytes=64 << 20, lora=adapters),
    )
    addr, port = node_port()
    learner = ray.remote(LearnerRank).options(num_cpus=1).remote(job, str(model_dir), 0, 1, "127.0.0.1", port)
    sampler = ray.remote(VllmSampler).options(num_cpus=1, runtime_env={"env_vars": SAMPLER_ENV})
    actor = sampler.remote(
        str(model_dir),
        Role.POLICY,
        max_model_len=64,
        lora=AdapterSpec(adapters.r, adapters.alpha, adapters.target_modules),
    )
    full = sampler.remote(str(model_dir), Role.POLICY, max_model_len=64)
    ray.get([a.__ray_ready__.remote() for a in (learner, actor, full)])
    open_weight_group([learner], [actor], Role.POLICY, "gloo", 120.0)
    nbytes = ray.get(learner.model_bytes.remote())
    runs = {
        "object_store": lambda: push_weights([learner], [actor], Role.POLICY),
        "collective": lambda: push_weights_collective([learner], [actor], Role.POLICY, 120.0),
    }
    best = dict.fromkeys(runs, float("inf"))
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(REPEATS):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    settings = SamplingSettings(max_new_tokens=32, seed=0)
    prompts = ["the movie was", "the plot"] * 32
    rates = {}
    for name, a in (("LoRA", actor), ("full", full)):
        ray.get(a.generate.remote(prompts, 1, settings))  # warm-up
        t0, tokens = time.perf_counter(), 0
        for _ in range(3):
            tokens += sum(len(c.token_ids) for c in ray.get(a.generate.remote(prompts, 1, settings)))
        rates[name] = tokens / (time.perf_counter() - t0)
    print(
        f"  {label}: adapters {nbytes / 1e6:.3f} MB  object_store {best['object_store'] * 1e3:.1f} ms  "
        f"collective {best['collective'] * 1e3:.1f} ms   sampling LoRA {rates['LoRA']:.0f} tok/s, "
        f"full model {rates['full']:.0f} tok/s",
        flush=True,
    )
    for a in (actor, full, learner):
        ray.kill(a)


def main() -> None:
    import ray

    from bench.bench_actors import _big_model
    from cluster.runtime.ray_system import SERVE_PROXY_ENV
    from demo.tiny import build

    sizes = [s for s in os.environ.get("JBOND_BENCH_SIZES", "tiny,medium").split(",") if s]
    if set(sizes) - {"tiny", "medium"}:
        sys.exit(f"JBOND_BENCH_SIZES: unknown size(s) {sorted(set(sizes) - {'tiny', 'medium'})}; tiny, medium")
    tiny = build(ROOT / "artifacts" / "tiny") / "policy"
    ray.init(  # as the job does: the workers' logs stay in Ray's files
        num_cpus=6,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **SERVE_PROXY_ENV}},
    )
    try:
        print(
            f"weight push learner actor -> vLLM actors (export, transport, validation, reload, confirmation), "
            f"best of {REPEATS}, fp32:",
            flush=True,
        )
        if "tiny" in sizes:
            _one_model(tiny, "tiny policy")
            _lora_model(tiny, "tiny policy, LoRA r=8")
        if "medium" in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                big = _big_model(Path(tmp))
                _one_model(big, "random 27M Llama")
                _lora_model(big, "random 27M Llama, LoRA r=8")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
