"""Prompts/s of the full system (Ray: vLLM actors, Serve reward service, DeepSpeed learner; every run.mode) vs a
naive single-process loop (HF generate, in-process reward model, plain-torch learner) vs TRL's RLOOTrainer, on the
same policy, reward model, prompts, samples per prompt (3) and token budget, one after the other in one run; plus
each phase's seconds per step and the mean completion length.

Two ~27 M policies (bench/medium_model.py): "medium", pre-trained, whose completions stop at EOS, and
"medium_random", the same shape untrained and never sampling EOS, whose completions all run to the budget.
"tiny" (0.5 M) is an option. JBOND_BENCH_POLICIES=medium (or a comma-separated list) runs a subset.

The full system and the naive loop both run `cluster.training.loop.train` unchanged; only the placement differs;
the full system starts Ray as the job does (cluster/runtime/ray_system.py's init_ray). TRL runs in its own venv
(.venv-trl, `make bench-trl`) as a subprocess (bench/trl_rloo.py); without that venv its row says so. Steps after
the warm-up are timed. Phases: sample (waiting for the samples), score, learn, sync (weight push); TRL's "learn"
is the rest of its step. Before each policy bench/idle.py waits for an idle machine; a table measured on a loaded
one, or whose naive steps spread too far, says so.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import idle
from cluster.config import loading
from cluster.config.job import JobConfig, Mode, SamplerBackend
from cluster.config.prompts import PromptCursor, load_prompts
from cluster.core import LoopState, StepRecord
from cluster.training.loop import train
from demo.tiny import build

ROOT = Path(__file__).resolve().parents[1]
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"
PROMPTS_PER_STEP, MAX_NEW_TOKENS = 32, 32
NAIVE, TRL = "naive single process (HF, torch)", "TRL RLOOTrainer (HF, torch)"
POLICIES = {  # name: (description, warm-up steps, timed steps per system)
    "medium": ("~27 M, pre-trained: completions stop at EOS", 1, 4),
    "medium_random": ("~27 M, random init: completions run to the budget", 1, 4),
    "tiny": ("0.5 M, pre-trained", 2, 8),
}


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    rate: float | None  # prompts/s over the timed steps (None: not run)
    split: dict[str, float]  # seconds per step by phase
    tokens: float | None = None  # mean completion length in tokens
    steps: tuple[float, ...] = ()  # each timed step's seconds
    note: str = ""


def policy_dir(name: str) -> Path:
    from bench.medium_model import build_medium, build_medium_random

    builders = {"medium": build_medium, "medium_random": build_medium_random}
    return builders[name]() / "policy" if name in builders else build(ROOT / "artifacts" / "tiny") / "policy"


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


def measure(name: str, job: JobConfig, system, warmup: int) -> Row:
    records: list[StepRecord] = []
    stamps: list[float] = []

    def on_step(rec: StepRecord) -> None:
        records.append(rec)
        stamps.append(time.perf_counter())

    train(job, system, load_prompts(job.prompts).prompts, LoopState(0, PromptCursor()), on_step)
    steps = tuple(b - a for a, b in itertools.pairwise(stamps[warmup - 1 :]))
    split = {phase: statistics.mean(r.seconds[phase] for r in records[warmup:]) for phase in records[0].seconds}
    tokens = statistics.mean(len(s.completion.token_ids) for r in records[warmup:] for s in r.samples)
    return Row(name, len(steps) * PROMPTS_PER_STEP / sum(steps), split, tokens, steps)


def naive_row(job: JobConfig, warmup: int) -> Row:
    from cluster.runtime.in_process import in_process_system

    naive_job = dataclasses.replace(
        job,
        models=dataclasses.replace(job.models, sampler_backend=SamplerBackend.HF),
        learner=dataclasses.replace(job.learner, zero_stage=0),
    )
    naive = in_process_system(naive_job)
    try:
        return measure(NAIVE, naive_job, naive, warmup)
    finally:
        naive.shutdown()


def full_rows(job: JobConfig, warmup: int) -> list[Row]:
    import ray

    from cluster.runtime.mode import resolve as resolve_mode
    from cluster.runtime.ray_system import init_ray, start_system

    rows = []
    init_ray(job)  # as the job starts it: workers' logs stay in Ray's files
    try:
        for mode in Mode:
            # as the job does (cluster/main.py): auto is resolved before the system starts (its thread counts)
            mode_job = resolve_mode(dataclasses.replace(job, run=dataclasses.replace(job.run, mode=mode)))
            system = start_system(mode_job)
            try:
                rows.append(measure(f"full system, {mode.value}", mode_job, system, warmup))
            finally:
                system.shutdown()
    finally:
        ray.shutdown()
    return rows


def trl_row(policy: Path, reward: Path, warmup: int, timed: int, log: Path) -> Row:
    if not TRL_PYTHON.exists():
        return Row(TRL, None, {}, note="not run: no .venv-trl (`make bench-trl` builds it)")
    args = {
        "--model": policy,
        "--reward": reward,
        "--prompts": ROOT / "configs" / "review_prompts.jsonl",
        "--prompts-per-step": PROMPTS_PER_STEP,
        "--samples": 3,
        "--max-new-tokens": MAX_NEW_TOKENS,
        "--warmup": warmup,
        "--timed": timed,
    }
    cmd = [str(TRL_PYTHON), str(ROOT / "bench" / "trl_rloo.py"), *(str(x) for kv in args.items() for x in kv)]
    # nothing of this process leaks in: not its venv's PYTHONPATH, nor the torch.distributed rendezvous variables
    # the in-process learner set (accelerate would join that process group)
    leaks = {"PYTHONPATH", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in leaks}
    with log.open("w") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return Row(TRL, None, {}, note=f"failed (exit {done.returncode}); see {log}")
    result = json.loads(lines[-1])
    return Row(TRL, result["prompts_per_s"], result["seconds"], result["tokens"], note=f"trl {result['trl']}")


def run_policy(name: str, policy: Path) -> list[Row]:
    _, warmup, timed = POLICIES[name]
    reward = build(ROOT / "artifacts" / "tiny") / "reward"
    job = job_config(policy, reward, warmup, timed)
    log = ROOT / "runs" / "bench" / f"trl_{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return [naive_row(job, warmup), *full_rows(job, warmup), trl_row(policy, reward, warmup, timed, log)]


def ratios(rows: list[Row]) -> list[str]:
    rate = {row.name: row.rate for row in rows if row.rate}
    naive, trl = rate.get(NAIVE), rate.get(TRL)
    full = {m.value: rate[f"full system, {m.value}"] for m in Mode if f"full system, {m.value}" in rate}
    lines = []
    for mode, r in full.items():
        vs = ([f"full {mode} / naive {r / naive:.2f}x"] if naive else []) + (
            [f"full {mode} / TRL RLOO {r / trl:.2f}x"] if trl else []
        )
        lines += ["   ".join(vs)] if vs else []
    fixed = [full[m] for m in ("sync", "pipelined") if m in full]
    if "auto" in full and fixed:
        lines.append(f"full auto / better of sync, pipelined {full['auto'] / max(fixed):.2f}x")
    if naive and trl:
        lines.append(f"naive / TRL RLOO {naive / trl:.2f}x")
    return lines


def report(name: str, rows: list[Row], loaded: str | None) -> None:  # flushed per policy: each table as it ends
    description, warmup, timed = POLICIES[name]
    naive = next((row.steps for row in rows if row.name == NAIVE), ())
    warnings = [w for w in (loaded, idle.uneven(naive, "the naive loop's timed steps")) if w]
    print(
        f"\n{'[LOADED] ' if warnings else ''}{name} policy ({description}): {PROMPTS_PER_STEP} prompts/step "
        f"x 3 samples (J-BOND: 1 policy + 2 anchor; RLOO: 3), <= {MAX_NEW_TOKENS} tokens, "
        f"{timed} timed steps after {warmup}"
    )
    for line in warnings:
        print(f"  {line}")
    for row in rows:
        if row.rate is None:
            print(f"  {row.name:<36} {'-':>7}            {row.note}")
            continue
        parts = "  ".join(f"{k} {v:.2f}s" for k, v in row.split.items())
        note = f"   ({row.note})" if row.note else ""
        print(f"  {row.name:<36} {row.rate:7.2f} prompts/s  {row.tokens:5.1f} tokens   per step: {parts}{note}")
    for line in ratios(rows):
        print(f"  {line}")
    sys.stdout.flush()


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    names = [s for s in os.environ.get("JBOND_BENCH_POLICIES", "medium,medium_random").split(",") if s]
    unknown = set(names) - set(POLICIES)
    if unknown:
        sys.exit(f"JBOND_BENCH_POLICIES: unknown policy(ies) {sorted(unknown)}; choose from {sorted(POLICIES)}")
    for name in names:
        policy = policy_dir(name)  # a first build loads the machine: before the idle check
        warning = idle.wait_for_idle()
        report(name, run_policy(name, policy), warning)


if __name__ == "__main__":
    main()
