"""What a run records, in one place: stats.jsonl, eval.jsonl, episodes, Prometheus metrics, TensorBoard/W&B,
the progress bar, and at the end the plots and summary.txt.

The loop hands it one StepRecord per step and the evaluator its results; it decides nothing about cadence.
A resumed run starts it at the checkpoint's step: rows of later (redone) steps are dropped first.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from bond.config import Algorithm, BondConfig
from bond.records import Role, ScoredCompletion
from cluster.config import loading, storage
from cluster.config.job import JobConfig
from cluster.core import EvalResult, StepRecord
from cluster.outputs import hacking, report
from cluster.outputs.episodes import EpisodeWriter
from cluster.outputs.tracking import Trackers

_EVAL_SCALARS = (
    "kl_ref",
    "kl_ref_tokenwise",
    "effective_n",
    "bon_gap",
    "anchor_effective_n",
    "anchor_effective_n_predicted",
    "distinct_1",
    "distinct_2",
    "reward_length_corr",
    "gold_reward",
    "proxy_minus_gold",
)
_NOT_SCALARS = {"step"}  # StepStats fields that are the x axis, not a curve
_NAMES = {
    Algorithm.JBOND: "J-BOND",
    Algorithm.BOND: "BOND",
    Algorithm.REINFORCE: "RLOO",
    Algorithm.REST: "ReST",
    Algorithm.GKD: "GKD",
}


def algorithm_name(cfg: BondConfig) -> str:
    """How the console names the run's algorithm (the progress bar's label)."""
    return ("iterated " if cfg.iterated else "") + _NAMES[cfg.algorithm]


class RunLog:
    def __init__(self, job: JobConfig, run_dir: Path, metrics, start_step: int):
        self.job, self.run_dir, self.metrics = job, Path(run_dir), metrics
        self.stats_path, self.eval_path = self.run_dir / "stats.jsonl", self.run_dir / "eval.jsonl"
        for path in (self.stats_path, self.eval_path):
            _truncate(path, start_step)
        self.episodes = EpisodeWriter(self.run_dir / "episodes")
        self.trackers = Trackers.open(
            self.run_dir, job.run.tensorboard, job.run.wandb_project, loading.to_dict(job), first_step=start_step
        )
        self._shown: list[str] = []  # sample tables printed before/after training, kept for summary.txt
        self._bar = None
        if job.run.progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=job.run.steps,
                initial=start_step,
                desc=algorithm_name(job.algorithm),
                dynamic_ncols=True,
                file=sys.stdout,
            )

    def note(self, text: str) -> None:
        """A line for the console that does not break the progress bar."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def samples(self, title: str, scored: Sequence[ScoredCompletion]) -> None:
        table = report.samples_table(title, scored)
        self.note(("\n" if self._shown else "") + table)
        self._shown.append(table)

    def step(self, rec: StepRecord) -> None:
        s = rec.stats
        sync_bytes = {role.value: sync.num_bytes for role, sync in rec.syncs.items()}
        report.append_stats(self.stats_path, s, rec.seconds, sync_bytes)
        self.episodes.write(s.step, rec.samples)
        self._prometheus(rec)
        scalars = {f"train/{k}": float(v) for k, v in dataclasses.asdict(s).items() if k not in _NOT_SCALARS}
        scalars.update({f"time/{phase}_s": seconds for phase, seconds in rec.seconds.items()})
        scalars.update({f"sync/{role}_bytes": float(n) for role, n in sync_bytes.items()})
        self.trackers.scalars(s.step, scalars)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(
                reward=f"{s.reward_policy:+.2f}", kl_ref=f"{s.kl_ref:.2f}", kl_anc=f"{s.kl_anchor:.2f}"
            )

    def _prometheus(self, rec: StepRecord) -> None:
        s, m = rec.stats, self.metrics
        m.record_step(s, [x.reward for x in rec.samples if x.completion.role is Role.POLICY])
        for phase, seconds in rec.seconds.items():
            m.record_phase(phase, seconds)
        for role, sync in rec.syncs.items():  # rest pushes the policy only when its actors sample next
            m.record_sync(role.value, sync.seconds, sync.num_bytes)
        if "sample" not in rec.seconds:  # rest's SFT steps reuse the round's Grow data (cluster/training/rest.py)
            return
        for role in dict.fromkeys(x.completion.role for x in rec.samples):  # the roles this algorithm samples
            tokens = sum(len(x.completion.token_ids) for x in rec.samples if x.completion.role is role)
            m.record_tokens(role.value, tokens, rec.seconds["sample"])
        m.record_staleness("policy", s.policy_version - 1 - s.sample_policy_version)
        # nan: this algorithm draws no anchor samples; a periodically copied anchor changes version only on copies
        if math.isfinite(s.sample_anchor_version) and not self.job.algorithm.anchor_copy_every:
            m.record_staleness("anchor", s.anchor_version - 1 - s.sample_anchor_version)

    def end_progress(self) -> None:
        """Training is over: later lines (final samples, summary) print below a closed bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def evaluation(self, results: Sequence[EvalResult]) -> None:
        """eval.jsonl rows with the hacking flags they raise (a `warning:` line the first time each fires)."""
        earlier = report.read_stats(self.eval_path)
        rows = [r.row() for r in results]
        flags = hacking.hack_flags([*earlier, *rows])
        with open(self.eval_path, "a") as f:
            for row in rows:
                f.write(json.dumps({**row, "flags": sorted(flags)}) + "\n")
        fired = {name for r in earlier for name in r.get("flags", ())}
        for name, warning in flags.items():
            if name not in fired:
                self.note(f"warning: {warning}")
        for r in results:
            values = {
                f"eval/{r.mode}/reward": r.reward,
                f"eval/{r.mode}/reward_std": r.reward_std,
                f"eval/{r.mode}/tokens": r.tokens,
            }
            values.update({f"eval/{r.mode}/{k}": getattr(r, k) for k in _EVAL_SCALARS if _finite(getattr(r, k))})
            self.trackers.scalars(r.step, values)
            self.metrics.record_eval(r)
            self.trackers.table(r.step, f"eval_samples/{r.mode}", ("prompt", "completion", "reward"), r.samples)

    def finish(self) -> dict:
        """Close the bar and trackers, write plots and summary.txt, print the summary; returns its numbers."""
        self.end_progress()
        self.trackers.close()
        rows = report.read_stats(self.stats_path)
        evals = report.read_stats(self.eval_path)  # the same JSON-lines layout, keyed by step
        (self.run_dir / "plots").mkdir(exist_ok=True)
        report.plot(rows, self.run_dir / "plots")
        if (curve := self.run_dir / report.BON_CURVE_FILE).exists():
            report.plot_bon(evals, json.loads(curve.read_text()), self.run_dir / "plots")
        tables = [report.summary_table(rows)] + ([eval_table(evals)] if evals else [])
        tables += ["\n".join(warnings)] if (warnings := hacking.summary(evals)) else []
        (self.run_dir / "summary.txt").write_text("\n\n".join(self._shown + tables) + "\n")
        print("\n" + "\n\n".join(tables), flush=True)
        print("\n" + storage.outputs_report(self.run_dir), flush=True)
        summary = {
            "steps": rows[-1]["step"] if rows else 0,
            "reward_first": report.window_mean(rows, "reward_policy", True),
            "reward_last": report.window_mean(rows, "reward_policy", False),
            "kl_ref_last": report.window_mean(rows, "kl_ref", False),
        }
        if evals:
            summary["eval_last"] = {r["mode"]: r for r in evals if r["step"] == evals[-1]["step"]}
        return summary

    def close(self) -> None:
        """On an error: stop the bar and flush the trackers (finish() does this on success)."""
        self.end_progress()
        self.trackers.close()


def _truncate(path: Path, start_step: int) -> None:
    """A fresh run starts empty; a resumed one keeps the rows up to its checkpoint's step."""
    if start_step == 0:
        path.unlink(missing_ok=True)
    elif path.exists():
        report.rewrite_stats(path, report.read_stats(path, up_to_step=start_step))


def eval_table(evals: Sequence[dict], max_rows: int = 10) -> str:
    """step | greedy reward | sampled reward | KL(pi||ref), one line per evaluation (first and latest kept)."""
    by_step: dict[int, dict[str, dict]] = {}
    for r in evals:
        by_step.setdefault(r["step"], {})[r["mode"]] = r
    steps = sorted(by_step)
    if len(steps) > max_rows:
        steps = steps[:1] + steps[-(max_rows - 1) :]
    prompts = max(r["prompts"] for r in evals)
    lines = [
        f"held-out evaluation ({prompts} prompts)",
        "effective N and BoN gap: at the tokenwise KL, against the reference's Best-of-N curve ('-': none or beyond)",
        f"{'step':>6}{'greedy reward':>16}{'sampled reward':>17}{'KL(pi||ref)':>14}{'tokenwise':>11}"
        f"{'effective N':>13}{'BoN gap':>10}",
    ]
    for step in steps:
        g, s = by_step[step].get("greedy"), by_step[step].get("sampled")
        lines.append(
            f"{step:>6}{_fmt(g, 'reward'):>16}{_fmt(s, 'reward'):>17}{_fmt(s, 'kl_ref'):>14}"
            f"{_fmt(s, 'kl_ref_tokenwise'):>11}{_fmt(s, 'effective_n', '.2f'):>13}{_fmt(s, 'bon_gap', '+.3f'):>10}"
        )
    anchor = [by_step[t]["sampled"] for t in steps if by_step[t].get("sampled", {}).get("anchor_effective_n")]
    lines += [
        f"anchor effective N at step {s['step']}: {_fmt(s, 'anchor_effective_n', '.2f')} (the EMA schedule's "
        f"2^(eta t): {_fmt(s, 'anchor_effective_n_predicted', '.2f')})"
        for s in anchor
    ]
    return "\n".join(lines)


def _fmt(row: dict | None, key: str, spec: str = ".4f") -> str:
    return "-" if row is None or row.get(key) is None else f"{row[key]:{spec}}"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
