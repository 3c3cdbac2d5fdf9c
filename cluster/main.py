"""Entry point: `python -m cluster.main --config configs/local.yaml [--set section.field=value ...] [--resume]`.

Locally it starts Ray itself; under `ray job submit ... -- python -m cluster.main ...` (or with RAY_ADDRESS
set) it joins that cluster. Writes under run.run_dir: config.yaml, stats.jsonl, episodes/*.parquet (RLDS),
checkpoints/, final_policy/ (HF safetensors), plots/*.png and summary.txt.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import yaml

from actors.sampling import SamplingSettings
from bond.config import ConfigError
from bond.records import Prompt, Role
from cluster import config_loading, report
from cluster.episodes import EpisodeWriter
from cluster.job_config import JobConfig
from cluster.loop import LoopState, StepRecord, train
from cluster.prompts import PromptCursor, PromptSet, fit_to_policy, load_prompts, needs_policy_tokenizer

TINY_ROOT = Path("artifacts/tiny")


def parse_config(argv: list[str] | None = None) -> JobConfig:
    parser = argparse.ArgumentParser(prog="python -m cluster.main", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML or JSON file with the config sections")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one field, e.g. --set algorithm.beta=0.3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in run.run_dir")
    args = parser.parse_args(argv)
    data = config_loading.load_document(args.config) if args.config else {}
    for assignment in args.set:
        config_loading.apply_override(data, assignment)
    if args.resume:
        config_loading.apply_override(data, "run.resume=true")
    return config_loading.build(JobConfig, data)


def ensure_tiny_models(job: JobConfig) -> None:
    paths = [Path(job.models.policy), Path(job.reward.path_or_name)]
    if job.models.build_tiny and any(_under(p, TINY_ROOT) and not p.exists() for p in paths):
        from cluster.tiny import build

        build(TINY_ROOT)


def _under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def newest_checkpoint(run_dir: Path) -> Path | None:
    candidates = sorted((run_dir / "checkpoints").glob("step_*"))
    return candidates[-1] if candidates else None


def show_samples(system, title: str, prompts: list[Prompt], max_new_tokens: int) -> str:
    greedy = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.0)
    import ray

    completions = ray.get(system.actors[Role.POLICY][0].generate.remote(prompts, 1, greedy))
    scored = system.score(completions)
    return report.samples_table(title, [p.plain_text for p in prompts], [s.completion.text for s in scored],
                                [s.reward for s in scored])


def fit_prompts(job: JobConfig, prompt_set: PromptSet) -> PromptSet:
    """Render the prompts with the policy's tokenizer at start-up: length limit (counted skips), chat template."""
    if not needs_policy_tokenizer(job.prompts, prompt_set):
        return prompt_set
    from transformers import AutoTokenizer

    return fit_to_policy(prompt_set, AutoTokenizer.from_pretrained(job.models.policy), job.prompts.max_prompt_length)


def run(job: JobConfig) -> dict:
    """Run the job; returns a small summary (first/last reward and KL) for callers and tests."""
    import ray

    from cluster.metrics import JobMetrics
    from cluster.system import System, init_ray

    run_dir = Path(job.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ensure_tiny_models(job)
    prompt_set = fit_prompts(job, load_prompts(job.prompts))
    for reason, count in prompt_set.skipped.items():
        print(f"prompts: skipped {count} rows ({reason})", flush=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_loading.to_dict(job), sort_keys=False))

    owns_ray = not ray.is_initialized()  # a caller (a test, a notebook) may already hold a Ray session
    if owns_ray:
        init_ray(job)
    metrics = JobMetrics(run=run_dir.name)
    for reason, count in prompt_set.skipped.items():
        metrics.record_skip(f"prompt {reason}", count)
    t_start = time.perf_counter()
    system = System(job)
    print(f"system up in {time.perf_counter() - t_start:.1f} s: {job.resources.policy_actors} policy + "
          f"{job.resources.anchor_actors} anchor actors ({job.models.sampler_backend}), "
          f"{job.reward.replicas} reward replica(s), {job.resources.learner_ranks} learner rank(s)", flush=True)
    try:
        return _train(job, system, metrics, prompt_set.prompts, run_dir)
    finally:
        system.shutdown()
        if owns_ray:
            ray.shutdown()


def _train(job: JobConfig, system, metrics, prompts: tuple[Prompt, ...], run_dir: Path) -> dict:
    from tqdm import tqdm

    stats_path = run_dir / "stats.jsonl"
    start = LoopState(step=0, cursor=PromptCursor())
    checkpoint = newest_checkpoint(run_dir) if job.run.resume else None
    if checkpoint is not None:
        extra = system.restore(checkpoint)
        start = LoopState(step=extra["step"], cursor=PromptCursor(*extra["cursor"]))
        report.rewrite_stats(stats_path, report.read_stats(stats_path, up_to_step=start.step))
        for role in (Role.POLICY, Role.ANCHOR):
            system.sync(role)  # the actors must sample with the restored weights
        print(f"resumed from {checkpoint} at step {start.step}", flush=True)
    elif stats_path.exists():
        stats_path.unlink()

    shown = list(dict.fromkeys(prompts))[: job.run.show_samples]
    before = show_samples(system, "samples before training (greedy):", shown, job.sampling.max_new_tokens) \
        if shown and start.step == 0 else ""
    if before:
        print(before, flush=True)

    episodes = EpisodeWriter(run_dir / "episodes")
    bar = tqdm(total=job.run.steps, initial=start.step, disable=not job.run.progress, desc="J-BOND",
               dynamic_ncols=True, file=sys.stdout)

    def on_step(rec: StepRecord) -> None:
        s = rec.stats
        report.append_stats(stats_path, s, rec.seconds)
        episodes.write(s.step, rec.samples)
        metrics.record_step(s, [x.reward for x in rec.samples if x.completion.role is Role.POLICY])
        for phase, seconds in rec.seconds.items():
            metrics.record_phase(phase, seconds)
        for role in (Role.POLICY, Role.ANCHOR):
            tokens = sum(len(x.completion.token_ids) for x in rec.samples if x.completion.role is role)
            metrics.record_tokens(role.value, tokens, rec.seconds["sample"])
            metrics.record_sync(role.value, rec.syncs[role].seconds, rec.syncs[role].num_bytes)
        metrics.record_staleness("policy", s.policy_version - 1 - s.sample_policy_version)
        metrics.record_staleness("anchor", s.anchor_version - 1 - s.sample_anchor_version)
        bar.update(1)
        bar.set_postfix(reward=f"{s.reward_policy:+.2f}", kl_ref=f"{s.kl_ref:.2f}", kl_anc=f"{s.kl_anchor:.2f}")
        every = job.run.checkpoint_every
        if (every and s.step % every == 0) or s.step == job.run.steps:
            system.save(run_dir / "checkpoints" / f"step_{s.step:07d}",
                        extra={"step": s.step, "cursor": [rec.state.cursor.epoch, rec.state.cursor.index]})

    final = train(job, system, prompts, start, on_step, metrics)
    bar.close()

    final_dir = run_dir / "final_policy"
    if final_dir.exists():
        shutil.rmtree(final_dir)
    system.export_hf(final_dir)
    after = show_samples(system, "samples after training (greedy):", shown, job.sampling.max_new_tokens) \
        if shown else ""
    rows = report.read_stats(stats_path)
    (run_dir / "plots").mkdir(exist_ok=True)
    plots = report.plot(rows, run_dir / "plots")
    table = report.summary_table(rows)
    text = "\n\n".join(x for x in (before, after, table) if x)
    (run_dir / "summary.txt").write_text(text + "\n")
    print(("\n" + after if after else "") + "\n\n" + table, flush=True)
    print(f"\nrun dir: {run_dir}  (stats.jsonl, episodes/, checkpoints/, final_policy/, "
          f"{', '.join(str(p.relative_to(run_dir)) for p in plots)})", flush=True)
    return {"steps": final.step, "reward_first": report.window_mean(rows, "reward_policy", True),
            "reward_last": report.window_mean(rows, "reward_policy", False),
            "kl_ref_last": report.window_mean(rows, "kl_ref", False)}


def main(argv: list[str] | None = None) -> None:
    try:
        job = parse_config(argv)
        run(job)  # start-up checks that need the models (e.g. the chat template) raise ConfigError too
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

