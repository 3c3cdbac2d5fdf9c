"""J-BOND vs REINFORCE with a KL penalty on the same task: the paper's reward-vs-KL(pi || ref) comparison.

`python -m bench.compare --config configs/local.yaml [--beta-rl 0.01 0.1 1] [--steps 80]` runs J-BOND and
REINFORCE at each beta_RL one after the other on the in-process system (the same samplers, reward model,
learner and loop as a Ray job, without the per-run start-up), then plots every run's smoothed reward
against its KL to the reference in one PNG and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from bond.config import Algorithm
from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.config.prompts import PromptCursor, load_prompts
from cluster.core import LoopState, StepRecord
from cluster.outputs import report
from cluster.runtime.in_process import in_process_system
from cluster.training.loop import train


def run_one(job: JobConfig, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    stats = out / "stats.jsonl"
    stats.unlink(missing_ok=True)
    system = in_process_system(job)
    try:

        def on_step(rec: StepRecord) -> None:
            report.append_stats(stats, rec.stats, rec.seconds)
            s = rec.stats
            print(f"  step {s.step:4d}  reward {s.reward_policy:+.3f}  KL(pi||ref) {s.kl_ref:.3f}", flush=True)

        train(job, system, load_prompts(job.prompts).prompts, LoopState(0, PromptCursor()), on_step)
    finally:
        system.shutdown()
    return report.read_stats(stats)


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, rows in runs.items():
        ax.plot(
            report.smooth([r["kl_ref"] for r in rows]),
            report.smooth([r["reward_policy"] for r in rows]),
            label=name,
            linewidth=2 if name == "J-BOND" else 1.2,
        )
    ax.set_xlabel("KL(pi || ref), nats (10-step mean)")
    ax.set_ylabel("policy reward (10-step mean)")
    ax.set_title("reward vs KL: J-BOND and REINFORCE with a KL penalty")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/local.yaml"))
    parser.add_argument("--beta-rl", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    args = parser.parse_args()
    data = loading.load_document(args.config)
    loading.apply_override(data, f"run.steps={args.steps}")
    loading.apply_override(data, "learner.zero_stage=0")  # one process: plain torch
    base = loading.build(JobConfig, data)

    variants = {"J-BOND": base.algorithm}
    for beta in args.beta_rl:
        variants[f"REINFORCE beta_RL={beta:g}"] = dataclasses.replace(
            base.algorithm, algorithm=Algorithm.REINFORCE, beta_rl=beta, gamma=0.0
        )
    runs = {}
    for name, algorithm in variants.items():
        print(f"{name}:", flush=True)
        slug = name.lower().replace(" ", "_").replace("=", "")
        runs[name] = run_one(dataclasses.replace(base, algorithm=algorithm), args.out / slug)
    plot(runs, args.out / "reward_vs_kl.png")
    print(f"\n{'run':<28}{'reward (last 10)':>18}{'KL(pi||ref) (last 10)':>24}")
    for name, rows in runs.items():
        print(
            f"{name:<28}{report.window_mean(rows, 'reward_policy', False):>18.3f}"
            f"{report.window_mean(rows, 'kl_ref', False):>24.3f}"
        )
    (args.out / "summary.json").write_text(
        json.dumps(
            {
                name: {
                    "reward_last10": report.window_mean(rows, "reward_policy", False),
                    "kl_ref_last10": report.window_mean(rows, "kl_ref", False),
                }
                for name, rows in runs.items()
            },
            indent=1,
        )
    )
    print(f"\nplot: {args.out / 'reward_vs_kl.png'}")


if __name__ == "__main__":
    main()
