"""Entry point: `python -m cluster.main --config configs/local.yaml [--set section.field=value ...] [--resume]`.

Locally it starts Ray itself; under `ray job submit ... -- python -m cluster.main ...` (or with RAY_ADDRESS
set) it joins that cluster. Writes under run.run_dir: config.yaml, stats.jsonl, eval.jsonl, episodes/*.parquet
(RLDS), tensorboard/, checkpoints/, exports/, final_policy/ (HF safetensors), plots/*.png, summary.txt and
logs/ray/ (the workers' Ray, Serve, vLLM and DeepSpeed logs of a local run).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import yaml

from actors.sampling import SamplingSettings
from bond.config import Algorithm, ConfigError
from bond.records import Prompt, Role
from bond.sampling_plan import sampling_plan
from cluster.config import helptext, loading, preflight, storage
from cluster.config.job import JobConfig
from cluster.config.prompts import PromptCursor, load_prompts
from cluster.core import LoopState, StepRecord
from cluster.outputs.run_log import RunLog
from cluster.runtime import mode
from cluster.training import checkpoints, evaluation, rest
from cluster.training.evaluation import PromptSplit
from cluster.training.failures import EXIT_FAILURE, JobFailure, run_with_auto_resume
from cluster.training.loop import train
from cluster.training.preemption import Preempted, StopRequest, stop_on_sigterm
from learner.checkpoint_dir import CheckpointError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.main",
        description=__doc__,
        epilog=helptext.render(JobConfig, JobConfig()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML or JSON file with the config sections")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one field, e.g. --set algorithm.beta=0.3 (repeatable)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest valid checkpoint in run.run_dir"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (YAML: file + --set + defaults) and exit"
    )
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[JobConfig, argparse.Namespace]:
    args = _parser().parse_args(argv)
    data = loading.load_document(args.config) if args.config else {}
    for assignment in args.set:
        loading.apply_override(data, assignment)
    if args.resume:
        loading.apply_override(data, "run.resume=true")
    return storage.with_resolved_run_dir(loading.build(JobConfig, data)), args


def parse_config(argv: list[str] | None = None) -> JobConfig:
    return parse_args(argv)[0]


def resume_point(job: JobConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from (None: start at step 0), refused early if its layout differs from the job's."""
    if not job.run.resume:
        return None
    path, skipped = checkpoints.newest_valid(run_dir)
    for p in skipped:
        print(f"warning: skipping incomplete or corrupt checkpoint {p}", flush=True)
    if path is None:
        print(f"no checkpoint in {run_dir / 'checkpoints'}: starting at step 0", flush=True)
        return None
    checkpoints.check_layout(
        path,
        job.resources.learner_ranks,
        job.learner.zero_stage,
        job.learner.dtype.value,
        job.learner.lora.layout if job.learner.lora is not None else None,
    )
    return path


def run(job: JobConfig) -> dict:
    """Run the job; returns a small summary (first/last reward and KL, last evaluation) for callers and tests."""
    import ray

    from cluster.outputs.metrics import JobMetrics
    from cluster.runtime.ray_system import init_ray, start_system

    run_dir = Path(job.run.run_dir)
    storage.make_run_dir(run_dir)
    preflight.check(job, ray_running=ray.is_initialized())
    prompt_set = preflight.fit_prompts(job, load_prompts(job.prompts))
    for reason, count in prompt_set.skipped.items():
        print(f"prompts: skipped {count} rows ({reason})", flush=True)
    split = evaluation.split_prompts(
        prompt_set.prompts, job.eval, job.prompts.seed, fit=partial(preflight.fit_prompts, job, source=job.eval.prompts)
    )
    for reason, count in split.skipped.items():
        print(f"eval prompts: skipped {count} rows ({reason})", flush=True)
    if split.overlap:
        print(
            f"warning: {split.overlap} of {len(split.heldout)} held-out prompts are also training prompts", flush=True
        )
    resume_from = resume_point(job, run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(loading.to_dict(job), sort_keys=False))
    owns_ray = not ray.is_initialized()  # a caller (a test, a notebook) may already hold a Ray session
    ray_logs = init_ray(job) if owns_ray else None
    # after config.yaml (it keeps what was asked) and before any role starts; its nodes tell whose cores they share
    job = mode.resolve(job, cluster_nodes=sum(1 for node in ray.nodes() if node["Alive"]))
    metrics = JobMetrics(run=run_dir.name, max_staleness=job.run.max_staleness)
    for reason, count in prompt_set.skipped.items():
        metrics.record_skip(f"prompt {reason}", count)
    t_start, system = time.perf_counter(), None
    try:
        system = start_system(job, metrics=metrics)
        actors = " + ".join(f"{job.resources.actors(role)} {role}" for role in job.actor_roles)
        print(
            f"system up in {time.perf_counter() - t_start:.1f} s: {actors} actors ({job.models.sampler_backend}), "
            f"{job.reward.replicas} reward replica(s), {job.resources.learner_ranks} learner rank(s)",
            flush=True,
        )
        print("  up after: " + ", ".join(f"{part} {s:.1f} s" for part, s in system.startup.items()), flush=True)
        with stop_on_sigterm() as stop:  # after ray.init, which installs its own SIGTERM handler
            return _train(job, system, metrics, split, run_dir, resume_from, stop)
    finally:
        if system is not None:
            system.shutdown()
        if owns_ray:
            ray.shutdown()
        if ray_logs is not None:
            _keep_worker_logs(ray_logs, run_dir / "logs" / "ray")


def _train(
    job: JobConfig, system, metrics, split: PromptSplit, run_dir: Path, resume_from: Path | None, stop: StopRequest
) -> dict:
    start = LoopState(step=0, cursor=PromptCursor())
    if resume_from is not None:
        extra = system.learner.restore(resume_from)
        start = LoopState(step=extra["step"], cursor=PromptCursor(*extra["cursor"]))
        for role in sampling_plan(job.algorithm).pushed:
            system.learner.sync(role)  # the actors must sample with the restored weights
        print(f"resumed from {resume_from} at step {start.step}", flush=True)
    log = RunLog(job, run_dir, metrics, start.step)
    try:
        shown = list(dict.fromkeys(split.train))[: job.run.show_samples]
        if shown and start.step == 0:
            log.samples("samples before training (greedy):", greedy_samples(system, shown, job))
        if start.step == 0 and evaluation.due(0, job.eval, job.run.steps):
            log.evaluation(evaluation.evaluate(system, job, split.heldout, 0, run_dir))

        def on_step(rec: StepRecord) -> None:
            log.step(rec)
            after_step(job, system, log, split, run_dir, rec, stop)

        train_algorithm(job, system, split.train, start, on_step, run_dir, note=log.note, metrics=metrics)
        log.end_progress()
        final_dir = run_dir / "final_policy"
        if final_dir.exists():
            shutil.rmtree(final_dir)
        system.learner.export_hf(final_dir)
        if shown:
            log.samples("samples after training (greedy):", greedy_samples(system, shown, job))
    except BaseException:
        log.close()
        raise
    return log.finish()


def train_algorithm(
    job: JobConfig,
    system,
    prompts: Sequence[Prompt],
    start: LoopState,
    on_step: Callable[[StepRecord], None],
    run_dir: Path,
    note: Callable[[str], None] = print,
    metrics=None,
) -> LoopState:
    """Train with the job's algorithm from `start` to run.steps: ReST's Grow/Improve rounds (training/rest.py, Grow
    datasets under run_dir) or, for every other algorithm, the per-step loop (cluster/training/loop.py). A job and
    bench.pareto's in-process runs both drive training through here."""
    if job.algorithm.algorithm is Algorithm.REST:
        return rest.train(job, system, prompts, start, on_step, run_dir, note=note, metrics=metrics)
    return train(job, system, prompts, start, on_step, metrics, note)


def after_step(
    job: JobConfig, system, log: RunLog, split: PromptSplit, run_dir: Path, rec: StepRecord, stop: StopRequest
) -> None:
    """What is due after a step: an evaluation, a checkpoint (then retention), an HF export; after a SIGTERM, a
    checkpoint and the stop (Preempted)."""
    step = rec.stats.step
    if evaluation.due(step, job.eval, job.run.steps):
        log.evaluation(evaluation.evaluate(system, job, split.heldout, step, run_dir))
    checkpoint = checkpoints.checkpoint_path(run_dir, step)
    if checkpoints.checkpoint_due(step, job.run.checkpoint_every, job.run.steps) or stop.requested:
        system.learner.save(
            checkpoint,
            sha256=job.run.checkpoint_sha256,
            extra={"step": step, "cursor": [rec.state.cursor.epoch, rec.state.cursor.index]},
        )
        checkpoints.prune(run_dir, job.run.keep_checkpoints)
    if checkpoints.due(step, job.run.export_every):
        system.learner.export_hf(checkpoints.export_path(run_dir, step))
    if stop.requested and step < job.run.steps:
        log.end_progress()
        raise Preempted(step, checkpoint)


def greedy_samples(system, prompts: list[Prompt], job: JobConfig):
    settings = dataclasses.replace(SamplingSettings(), max_new_tokens=job.sampling.max_new_tokens, temperature=0.0)
    return system.scorer.score(system.samplers.sample(Role.POLICY, prompts, 1, settings))


def _keep_worker_logs(source: Path, target: Path) -> None:
    """Copy the local Ray session's logs (every worker's stdout/stderr, Serve, raylet) into the run dir."""
    try:
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
    except (OSError, shutil.Error) as e:  # a log file rotated away mid-copy must not fail a finished run
        print(f"warning: could not copy all Ray logs from {source}: {e}", file=sys.stderr)
    print(f"worker logs (Ray, Serve, vLLM, DeepSpeed): {target}  (run.verbose=true also streams them here)", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Exit codes: 0 done (or stopped by SIGTERM with a checkpoint), 2 config or checkpoint error, 3 job failure
    (one line)."""
    try:
        job, args = parse_args(argv)
        if args.print_config:
            print(yaml.safe_dump(loading.to_dict(job), sort_keys=False), end="")
            return
        run_with_auto_resume(job, run)
    except (ConfigError, CheckpointError) as e:  # a ConfigError also at start-up (model paths, ports, Ray address)
        print(f"{'config' if isinstance(e, ConfigError) else 'checkpoint'} error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Preempted as e:
        print(str(e), flush=True)
    except JobFailure as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None


if __name__ == "__main__":
    main()
