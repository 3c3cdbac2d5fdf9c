"""Prompts/s of the full system (Ray: vLLM actors, Serve reward service, DeepSpeed learner; sync and pipelined)
vs a naive single-process loop (HF generate, in-process reward model, plain-torch learner) vs TRL's
RLOOTrainer, on the same policy, reward model, prompts, samples per prompt (3) and token budget, one after the
other in one run; plus each phase's seconds per step. Two policies: the tiny one (0.5 M) and the medium one
(~27 M, bench/medium_model.py); JBOND_BENCH_SIZES=tiny or =medium runs one of them.

The full system and the naive loop both run `cluster.training.loop.train` unchanged; only the placement differs. TRL
runs in its own venv (.venv-trl, `make bench-trl`) as a subprocess (bench/trl_rloo.py); without that venv
its row says so. Steps after the warm-up are timed. Phases: sample (waiting for the samples), score,
learn, sync (weight push); TRL's "learn" is the rest of its step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cluster.config import loading
from cluster.config.job import JobConfig, Mode, SamplerBackend
from cluster.config.prompts import PromptCursor, load_prompts
from cluster.core import LoopState, StepRecord
from cluster.training.loop import train
from demo.tiny import build

ROOT = Path(__file__).resolve().parents[1]
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"
PROMPTS_PER_STEP, MAX_NEW_TOKENS = 32, 32
STEPS = {"tiny": (2, 8), "medium": (1, 4)}  # (warm-up, timed) steps per system


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    rate: float | None  # prompts/s over the timed steps (None: not run)
    split: dict[str, float]  # seconds per step by phase
    note: str = ""


def job_config(policy: Path, reward: Path, warmup: int, timed: int) -> JobConfig:
    data = loading.load_document(ROOT / "configs" / "local.yaml")
    for assignment in (
        f"models.policy={policy}",
        f"reward.path_or_name={reward}",
        f"prompts.path={ROOT / 'configs' / 'review_prompts.jsonl'}",
        f"algorithm.prompts_per_step={PROMPTS_PER_STEP}",
        f"sampling.max_new_tokens={MAX_NEW_TOKENS}",
        f"run.steps={warmup + timed}",
        "run.progress=false",
        "reward.http_port=18931",
        "learner.bucket_bytes=16777216",
    ):  # the medium model's largest tensor is 3 MiB
        loading.apply_override(data, assignment)
    return loading.build(JobConfig, data)


def measure(name: str, job: JobConfig, system, warmup: int, timed: int) -> Row:
    records: list[StepRecord] = []
    stamps: list[float] = []

    def on_step(rec: StepRecord) -> None:
        records.append(rec)
        stamps.append(time.perf_counter())

    train(job, system, load_prompts(job.prompts).prompts, LoopState(0, PromptCursor()), on_step)
    seconds = stamps[-1] - stamps[warmup - 1]
    split = {phase: statistics.mean(r.seconds[phase] for r in records[warmup:]) for phase in records[0].seconds}
    return Row(name, timed * PROMPTS_PER_STEP / seconds, split)


def naive_row(job: JobConfig, warmup: int, timed: int) -> Row:
    from cluster.runtime.in_process import in_process_system

    naive_job = dataclasses.replace(
        job,
        models=dataclasses.replace(job.models, sampler_backend=SamplerBackend.HF),
        learner=dataclasses.replace(job.learner, zero_stage=0),
    )
    naive = in_process_system(naive_job)
    try:
        return measure("naive single process (HF, torch)", naive_job, naive, warmup, timed)
    finally:
        naive.shutdown()


def full_rows(job: JobConfig, warmup: int, timed: int) -> list[Row]:
    import ray

    from cluster.runtime.ray_system import start_system

    rows = []
    ray.init(
        num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}
    )
    try:
        for mode in (Mode.SYNC, Mode.PIPELINED):
            mode_job = dataclasses.replace(job, run=dataclasses.replace(job.run, mode=mode))
            system = start_system(mode_job)
            try:
                rows.append(measure(f"full system, {mode.value}", mode_job, system, warmup, timed))
            finally:
                system.shutdown()
    finally:
        ray.shutdown()
    return rows


def trl_row(policy: Path, reward: Path, warmup: int, timed: int, log: Path) -> Row:
    name = "TRL RLOOTrainer (HF, torch)"
    if not TRL_PYTHON.exists():
        return Row(name, None, {}, "not run: no .venv-trl (`make bench-trl` builds it)")
    cmd = [
        str(TRL_PYTHON),
        str(ROOT / "bench" / "trl_rloo.py"),
        "--model",
        str(policy),
        "--reward",
        str(reward),
        "--prompts",
        str(ROOT / "configs" / "review_prompts.jsonl"),
        "--prompts-per-step",
        str(PROMPTS_PER_STEP),
        "--samples",
        "3",
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        "--warmup",
        str(warmup),
        "--timed",
        str(timed),
    ]
    # nothing of this process leaks in: not its venv's PYTHONPATH, nor the torch.distributed rendezvous variables
    # the in-process learner set (accelerate would join that process group)
    leaks = {"PYTHONPATH", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in leaks}
    with log.open("w") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return Row(name, None, {}, f"failed (exit {done.returncode}); see {log}")
    result = json.loads(lines[-1])
    return Row(name, result["prompts_per_s"], result["seconds"], f"trl {result['trl']}")


def run_size(size: str) -> list[Row]:
    warmup, timed = STEPS[size]
    tiny = build(ROOT / "artifacts" / "tiny")
    if size == "medium":
        from bench.medium_model import build_medium

        policy = build_medium() / "policy"
    else:
        policy = tiny / "policy"
    job = job_config(policy, tiny / "reward", warmup, timed)
    log = ROOT / "runs" / "bench" / f"trl_{size}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return [
        naive_row(job, warmup, timed),
        *full_rows(job, warmup, timed),
        trl_row(policy, tiny / "reward", warmup, timed, log),
    ]


def report(size: str, rows: list[Row]) -> None:  # flushed per size: a long run shows each table as it ends
    warmup, timed = STEPS[size]
    print(
        f"\n{size} policy: {PROMPTS_PER_STEP} prompts/step x 3 samples (J-BOND: 1 policy + 2 anchor; "
        f"RLOO: 3), <= {MAX_NEW_TOKENS} tokens, {timed} timed steps after {warmup}"
    )
    for row in rows:
        if row.rate is None:
            print(f"  {row.name:<36} {'-':>7}            {row.note}")
            continue
        parts = "  ".join(f"{k} {v:.2f}s" for k, v in row.split.items())
        print(
            f"  {row.name:<36} {row.rate:7.2f} prompts/s   per step: {parts}" + (f"   ({row.note})" if row.note else "")
        )
    rate = {row.name: row.rate for row in rows if row.rate}
    naive, trl = rate.get("naive single process (HF, torch)"), rate.get("TRL RLOOTrainer (HF, torch)")
    for mode in ("sync", "pipelined"):
        full = rate.get(f"full system, {mode}")
        if full and naive:
            print(f"  full {mode} / naive: {full / naive:.2f}x", end="")
        if full and trl:
            print(f"   full {mode} / TRL RLOO: {full / trl:.2f}x", end="")
        print()
    if naive and trl:
        print(f"  naive / TRL RLOO: {naive / trl:.2f}x")
    sys.stdout.flush()


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    sizes = [s for s in os.environ.get("JBOND_BENCH_SIZES", "tiny,medium").split(",") if s]
    unknown = set(sizes) - set(STEPS)
    if unknown:
        sys.exit(f"JBOND_BENCH_SIZES: unknown size(s) {sorted(unknown)}; choose from {sorted(STEPS)}")
    for size in sizes:
        report(size, run_size(size))


if __name__ == "__main__":
    main()
