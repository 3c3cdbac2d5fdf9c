"""What a person looks at after (and during) a run: stats.jsonl, PNG plots, a summary table, sample texts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from bond.records import ScoredCompletion, StepStats

BON_CURVE_FILE = "bon_curve.json"  # the reference's Best-of-N curve, drawn once per run (training/evaluation.py)


def append_stats(
    path: Path, stats: StepStats, seconds: dict[str, float], sync_bytes: dict[str, int] | None = None
) -> None:
    """One stats.jsonl row: the StepStats, the phase seconds and the bytes each role's weight push moved."""
    row = {**dataclasses.asdict(stats), "phase_seconds": seconds}
    if sync_bytes is not None:
        row["sync_bytes"] = sync_bytes
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_stats(path: Path, up_to_step: int | None = None) -> list[dict]:
    """Rows of stats.jsonl (those with step <= up_to_step: a resumed run drops steps it will redo)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if up_to_step is None or r["step"] <= up_to_step]


def rewrite_stats(path: Path, rows: Sequence[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def plot(rows: Sequence[dict], out_dir: Path) -> list[Path]:
    """reward and KL vs step, and reward vs KL(pi || pi_ref) (the paper's Pareto view)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return []
    steps = [r["step"] for r in rows]
    reward = [r["reward_policy"] for r in rows]
    kl_ref = [r["kl_ref"] for r in rows]
    kl_anchor = [r["kl_anchor"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, reward, label="policy reward", alpha=0.35, color="C0")
    ax1.plot(steps, smooth(reward), label="policy reward (10-step mean)", color="C0")
    ax1.plot(steps, smooth([r["reward_anchor"] for r in rows]), label="anchor reward (10-step mean)", color="C1")
    ax1.set(xlabel="step", ylabel="reward")
    ax2.plot(steps, kl_ref, label="KL(pi || ref)")
    ax2.plot(steps, kl_anchor, label="KL(pi || anchor)")
    ax2.set(xlabel="step", ylabel="nats")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    curves = _save(fig, out_dir / "reward_kl_vs_step.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    points = ax.scatter(kl_ref, reward, c=steps, cmap="viridis", s=12)
    fig.colorbar(points, label="step")
    ax.set(xlabel="KL(pi || ref), nats", ylabel="policy reward", title="reward vs KL")
    ax.grid(alpha=0.3)
    return [curves, _save(fig, out_dir / "reward_vs_kl.png")]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bon(evals: Sequence[dict], curve: Sequence[dict], out_dir: Path) -> list[Path]:
    """The sampled evaluations, reward vs KL(pi || ref) (tokenwise), over the reference's Best-of-N curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sampled = [r for r in evals if r["mode"] == "sampled" and r.get("kl_ref_tokenwise") is not None]
    if not curve or not sampled:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([p["kl_ref"] for p in curve], [p["reward"] for p in curve], ".-", color="C7", label="Best-of-N of ref")
    for p in curve:
        if p["n"] & (p["n"] - 1) == 0:  # label N = 1, 2, 4, ... only
            ax.annotate(
                f"N={p['n']}", (p["kl_ref"], p["reward"]), fontsize=7, xytext=(2, -9), textcoords="offset points"
            )
    points = ax.scatter(
        [r["kl_ref_tokenwise"] for r in sampled], [r["reward"] for r in sampled], c=[r["step"] for r in sampled], s=20
    )
    fig.colorbar(points, label="step of the evaluation")
    ax.set_xlabel("KL(pi || ref), nats (BoN: log N - (N-1)/N)")
    ax.set_ylabel("held-out reward (sampled)")
    ax.set_title("policy vs Best-of-N of the reference")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "bon_frontier.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def smooth(values: Sequence[float], width: int = 10) -> list[float]:
    """Trailing mean over up to `width` points (per-step values are noisy at small batch sizes)."""
    return [sum(values[max(0, i - width + 1) : i + 1]) / (i + 1 - max(0, i - width + 1)) for i in range(len(values))]


def window_mean(rows: Sequence[dict], key: str, first: bool, width: int = 10) -> float:
    part = rows[:width] if first else rows[-width:]
    return sum(r[key] for r in part) / max(1, len(part))


def summary_table(rows: Sequence[dict]) -> str:
    if not rows:
        return "no steps"
    keys = [
        ("reward_policy", "policy reward"),
        ("reward_anchor", "anchor reward"),
        ("kl_ref", "KL(pi||ref)"),
        ("kl_anchor", "KL(pi||anchor)"),
        ("frac_penalised", "frac r_J=-log16"),
        ("loss_fw", "loss_fw"),
        ("loss_bw", "loss_bw"),
        ("seconds", "learner s/step"),
    ]
    lines = [f"{'metric':<18}{'first 10 steps':>16}{'last 10 steps':>16}"]
    lines += [
        f"{label:<18}{window_mean(rows, k, True):>16.4f}{window_mean(rows, k, False):>16.4f}" for k, label in keys
    ]
    phases: dict[str, float] = {}  # a phase that only some steps have (rest's Grow) is averaged over every step
    for r in rows:
        for p, seconds in r["phase_seconds"].items():
            phases[p] = phases.get(p, 0.0) + seconds / len(rows)
    lines.append("mean seconds/step: " + ", ".join(f"{p} {s:.2f}" for p, s in phases.items()))
    return "\n".join(lines)


def samples_table(title: str, scored: Sequence[ScoredCompletion]) -> str:
    """One line per sample: its reward, the prompt as a reader sees it, the completion."""
    rows = [f"  {s.reward:+6.2f}  {s.completion.prompt_text} | {s.completion.text.strip()}" for s in scored]
    return "\n".join([title, *rows])
