"""`make summary`: J-BOND with the textual-entailment reward on the summary world, faithfulness and its price.

    python -m bench.nli_summary [--config configs/summary.yaml] [--seeds 0 1 2] [--steps 60] [--out runs/summary]

Builds artifacts/summary if needed (demo.summary_models), then per seed trains J-BOND on the in-process
system (HF sampler, in-process NLI reward, plain-torch learner) and evaluates on the held-out sources before
training and every --eval-every steps: the NLI reward (log P(entailment)), KL(pi || ref), and, from the
world's literal labels, the faithful / contradiction / neutral / malformed fractions, the copy rate (a
summary restating every claim of its source) and the mean length in words. Writes OUT/summary.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from bench.pareto import build_job
from bench.pareto_report import mean_se
from cluster.outputs import hacking

METRICS = ("reward", "kl_ref", "faithful", "contradiction", "neutral", "malformed", "copy_rate", "words")


def evaluate(system, job, prompts: list[str], step: int, seed: int) -> tuple[dict, list[tuple[str, str]]]:
    from bond.records import Role
    from cluster.training.evaluation import correlation
    from demo.summary_world import summary_stats

    settings = dataclasses.replace(job.sampling, seed=(1 << 41) + seed * 1_000_003 + step)  # apart from training's
    k = job.eval.samples_per_prompt
    completions = system.samplers.sample(Role.POLICY, prompts, k, settings)
    rewards = [s.reward for s in system.scorer.score(completions)]
    kl = system.learner.kl_to_reference(completions)
    texts = [c.text.strip() for c in completions]
    stats = summary_stats([p for p in prompts for _ in range(k)], texts)
    lengths = [len(c.token_ids) for c in completions]
    row = {
        "step": step,
        "mode": "sampled",  # the columns cluster/outputs/hacking.py reads, as in eval.jsonl
        "tokens": statistics.fmean(lengths),
        "reward_length_corr": correlation(rewards, lengths),
        "gold_reward": stats.faithful,  # the mean of eval.gold_reward (demo.summary_world:faithfulness)
        "reward": statistics.fmean(rewards),
        "kl_ref": kl.sampled.mean().item(),
        "kl_ref_tokenwise": kl.tokenwise.mean().item(),
        **dataclasses.asdict(stats),
    }
    return row, [(prompts[i // k], texts[i]) for i in range(0, len(texts), k)][:4]


def run_seed(config: Path, overrides: list[str], seed: int) -> dict:
    import torch

    from cluster.config.prompts import PromptCursor, load_prompts
    from cluster.core import LoopState
    from cluster.runtime.in_process import in_process_system
    from cluster.training import evaluation
    from cluster.training.loop import train

    torch.set_num_threads(1)
    job = build_job(config, overrides + [f"run.seed={seed}"])
    split = evaluation.split_prompts(load_prompts(job.prompts).prompts, job.eval, job.prompts.seed)
    heldout = [p.text for p in split.heldout[: job.eval.num_prompts]]
    rows, shown = [], {}
    system = in_process_system(job)
    try:
        row, shown["before"] = evaluate(system, job, heldout, 0, seed)
        rows.append(row)

        def on_step(rec) -> None:
            if evaluation.due(rec.state.step, job.eval, job.run.steps):
                row, shown["after"] = evaluate(system, job, heldout, rec.state.step, seed)
                flags = hacking.hack_flags([*rows, row])
                fired = {f for r in rows for f in r.get("flags", ())}
                for warning in (w for name, w in flags.items() if name not in fired):
                    print(f"  seed {seed} step {row['step']:3d}: warning: {warning}", flush=True)
                rows.append({**row, "flags": sorted(flags)})
                print(
                    f"  seed {seed} step {row['step']:3d}: reward {row['reward']:+.3f}  faithful "
                    f"{row['faithful']:.2f}  copy {row['copy_rate']:.2f}  words {row['words']:.1f}  "
                    f"KL {row['kl_ref']:.2f}",
                    flush=True,
                )

        train(job, system, split.train, LoopState(0, PromptCursor()), on_step)
    finally:
        system.shutdown()
    return {"seed": seed, "eval": rows, "shown": shown}


def markdown(results: list[dict], command: str, minutes: float) -> str:
    first = [r["eval"][0] for r in results]
    last = [r["eval"][-1] for r in results]
    out = [
        f"Produced by `{command}` ({len(results)} seeds, {minutes:.0f} min); held-out sources, mean ± standard "
        "error over seeds. reward = log P(entailment) from the NLI classifier; faithful / contradiction / "
        "neutral / malformed from the world's literal labels; copy = the summary restates every claim of "
        "its source.",
        "",
        f"| | before (step 0) | after (step {last[0]['step']}) |",
        "|---|---|---|",
    ]
    for key in METRICS:
        (b, bs), (a, as_) = mean_se([r[key] for r in first]), mean_se([r[key] for r in last])
        out.append(f"| {key} | {b:.3f} ± {bs:.3f} | {a:.3f} ± {as_:.3f} |")
    out += ["", *(f"seed {r['seed']}: {w}" for r in results for w in hacking.summary(r["eval"]))]
    shown = results[0]["shown"]
    out += ["", "Samples (seed 0, one per source):", ""]
    for when in ("before", "after"):
        for prompt, text in shown.get(when, []):
            out.append(f"    {when:<6} {prompt}  ->  {text}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/summary.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/summary"))
    args = parser.parse_args(argv)
    command = "python -m bench.nli_summary " + shlex.join(sys.argv[1:] if argv is None else argv)
    from demo import summary_models

    job = build_job(args.config, [])
    summary_models.build(Path(job.models.policy).parent)
    t0 = time.perf_counter()
    overrides = [
        "models.sampler_backend=hf",
        "learner.zero_stage=0",
        f"run.steps={args.steps}",
        f"eval.every_steps={args.eval_every}",
        "run.progress=false",
    ]
    results = [run_seed(args.config, overrides, seed) for seed in args.seeds]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = markdown(results, command, (time.perf_counter() - t0) / 60)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
