"""The maths and the outputs of `make pareto`: mean and standard error over seeds, reward-vs-KL fronts at KL
budgets, the J-BOND vs REINFORCE verdicts (the paper's claim), J-BOND against the rest of the family (BOND-N,
ReST, GKD) by the same rule, each GKD student against its teacher, the PNG and the markdown table.

The front of one run at a KL budget b is the best held-out reward among its evaluations whose
KL(pi || ref) (k1, the estimator every method shares) is at most b; step 0 (pi = ref) is always one of
them. Fronts are averaged over seeds; a difference counts as holding or reversed only beyond 2 standard
errors (the seeds' standard errors combined), and as unresolved otherwise. A budget beyond the KL either
method reached (its reach: the seeds' mean of their largest evaluated KL) compares nothing: a curve that
stops at KL 1 has no point at KL 4 to be better or worse than, so such cells are "beyond", not verdicts.
A GKD student is compared with its teacher seed by seed (the teacher of seed k is the J-BOND run of seed k):
the mean and standard error of the paired differences of their last evaluations' reward and KL.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

BUDGETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # nats of KL(pi || ref)
Z = 2.0  # standard errors a difference must exceed to count


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def front(rows: Sequence[dict], budget: float) -> float:
    """Best reward among evaluation rows with kl_ref <= budget (the first row, step 0, has KL ~ 0)."""
    inside = [r["reward"] for r in rows if r["kl_ref"] <= budget]
    return max(inside) if inside else rows[0]["reward"]


@dataclass(frozen=True)
class Curve:
    name: str
    seeds: int
    steps: list[int]
    kl: list[tuple[float, float]]  # (mean, se) over seeds at each evaluation, k1
    kl_tokenwise: list[tuple[float, float]]
    reward: list[tuple[float, float]]
    front: list[tuple[float, float]]  # at each of BUDGETS
    reach: tuple[float, float]  # the largest evaluated KL of each seed: mean, se


@dataclass(frozen=True)
class Verdict:
    jbond: str
    other: str  # a REINFORCE run (the paper's claim) or another method of the family
    budget: float
    diff: float  # J-BOND front - the other's front, mean over seeds
    se: float
    outcome: str  # "holds" | "reversed" | "unresolved" | "beyond" (a method never reached this KL)


@dataclass(frozen=True)
class Distillation:
    student: str
    teacher: str
    reward: tuple[float, float]  # student - teacher at the last evaluation, paired by seed: mean, se
    kl: tuple[float, float]  # the same for KL(pi || ref), k1


@dataclass(frozen=True)
class Summary:
    curves: list[Curve]
    bon_n: list[int]
    bon_kl: list[float]
    bon_reward: list[tuple[float, float]]  # (mean, se) over seeds
    bon_front: list[float]  # BoN reward at the largest n whose KL fits each budget
    verdicts: list[Verdict]  # J-BOND vs REINFORCE
    family_verdicts: list[Verdict]  # J-BOND vs BOND-N, ReST, GKD
    distillations: list[Distillation]


def curve(name: str, runs: Sequence[Sequence[dict]]) -> Curve:
    steps = [r["step"] for r in runs[0]]
    for rows in runs:
        if [r["step"] for r in rows] != steps:
            raise ValueError(f"{name}: seeds were evaluated at different steps")

    def at(key: str) -> list[tuple[float, float]]:
        return [mean_se([rows[i][key] for rows in runs]) for i in range(len(steps))]

    return Curve(
        name=name,
        seeds=len(runs),
        steps=steps,
        kl=at("kl_ref"),
        kl_tokenwise=at("kl_ref_tokenwise"),
        reward=at("reward"),
        front=[mean_se([front(rows, b) for rows in runs]) for b in BUDGETS],
        reach=mean_se([max(r["kl_ref"] for r in rows) for rows in runs]),
    )


def verdict(j: Curve, r: Curve, i: int) -> Verdict:
    (mj, sj), (mr, sr) = j.front[i], r.front[i]
    diff, se = mj - mr, math.hypot(sj, sr)
    if BUDGETS[i] > min(j.reach[0], r.reach[0]):
        outcome = "beyond"
    else:
        outcome = "holds" if diff > Z * se else "reversed" if diff < -Z * se else "unresolved"
    return Verdict(j.name, r.name, BUDGETS[i], diff, se, outcome)


def distillation(student: str, teacher: str, runs: dict[str, list[list[dict]]]) -> Distillation:
    pairs = list(zip(runs[student], runs[teacher], strict=True))  # seed k's student distils seed k's teacher
    return Distillation(
        student,
        teacher,
        reward=mean_se([s[-1]["reward"] - t[-1]["reward"] for s, t in pairs]),
        kl=mean_se([s[-1]["kl_ref"] - t[-1]["kl_ref"] for s, t in pairs]),
    )


def summarise(
    runs: dict[str, list[list[dict]]], bon: Sequence[Sequence[dict]], teachers: dict[str, str] | None = None
) -> Summary:
    """teachers: student -> teacher names (GKD); both must have run on the same seeds, in the same order."""
    curves = [curve(name, seeds) for name, seeds in runs.items() if seeds]
    jbond = [c for c in curves if c.name.startswith("J-BOND")]
    reinforce = [c for c in curves if c.name.startswith("REINFORCE")]
    family = [c for c in curves if c not in jbond and c not in reinforce]
    verdicts = [verdict(j, r, i) for j in jbond for r in reinforce for i in range(len(BUDGETS))]
    family_verdicts = [verdict(j, o, i) for j in jbond for o in family for i in range(len(BUDGETS))]
    distillations = [distillation(s, t, runs) for s, t in (teachers or {}).items() if runs.get(s) and runs.get(t)]
    n = [p["n"] for p in bon[0]]
    kl = [p["kl_ref"] for p in bon[0]]
    reward = [mean_se([seed[i]["reward"] for seed in bon]) for i in range(len(n))]
    bon_front = [max(m for (m, _), k in zip(reward, kl, strict=True) if k <= b) for b in BUDGETS]
    return Summary(curves, n, kl, reward, bon_front, verdicts, family_verdicts, distillations)


def markdown(s: Summary, skipped: dict[str, str], seeds: Sequence[int], command: str, minutes: float) -> str:
    out = [
        f"Produced by `{command}` ({len(seeds)} seeds: {', '.join(map(str, seeds))}; {minutes:.0f} min). "
        "Mean ± standard error over seeds, on the held-out prompts.",
        "",
        "Last evaluation of each method (KL in nats; k1 = log pi - log ref on policy samples, tokenwise = "
        "exact per-token KL at the sampled prefixes):",
        "",
        "| method | reward | KL k1 | KL tokenwise |",
        "|---|---|---|---|",
    ]
    for c in s.curves:
        (rm, rs), (km, ks), (tm, ts) = c.reward[-1], c.kl[-1], c.kl_tokenwise[-1]
        out.append(f"| {c.name} | {rm:+.3f} ± {rs:.3f} | {km:.3f} ± {ks:.3f} | {tm:.3f} ± {ts:.3f} |")
    (r1, _), (r64, s64) = s.bon_reward[0], s.bon_reward[-1]
    out.append(f"| reference (BoN n=1) | {r1:+.3f} | 0 | 0 |")
    out.append(
        f"| BoN n={s.bon_n[-1]} (analytic KL) | {r64:+.3f} ± {s64:.3f} | {s.bon_kl[-1]:.3f} | {s.bon_kl[-1]:.3f} |"
    )
    out += [
        "",
        "Front: best held-out reward reached within a KL(pi || ref) budget (k1):",
        "",
        "| method | reach (KL) | " + " | ".join(f"KL <= {b:g}" for b in BUDGETS) + " |",
        "|---|---|" + "---|" * len(BUDGETS),
    ]
    for c in s.curves:
        out.append(
            f"| {c.name} | {c.reach[0]:.2f} ± {c.reach[1]:.2f} | "
            + " | ".join(f"{m:+.3f} ± {e:.3f}" for m, e in c.front)
            + " |"
        )
    out.append(f"| Best-of-N | {s.bon_kl[-1]:.2f} | " + " | ".join(f"{m:+.3f}" for m in s.bon_front) + " |")
    if s.verdicts:
        out += [
            "",
            f"The paper's claim, J-BOND's front above REINFORCE's for every beta_RL: J-BOND front minus "
            f"REINFORCE front; ✓ holds, ✗ reversed (beyond {Z:g} standard errors), ~ unresolved, "
            "— beyond the reach of one of the two (not compared).",
            "",
        ]
        out += _verdict_tables(s.verdicts, "(REINFORCE beta_RL, KL budget)")
    if s.family_verdicts:
        out += [""] * (out[-1] != "") + [
            "J-BOND against the rest of the family by the same rule (J-BOND front minus the method's; ✓ J-BOND above):",
            "",
        ]
        out += _verdict_tables(s.family_verdicts, "(method, KL budget)")
    for d in s.distillations:
        out.append(
            f"{d.student} vs its teacher {d.teacher} (last evaluation, paired by seed): reward "
            f"{d.reward[0]:+.3f} ± {d.reward[1]:.3f} ({_gap(d.reward, 'below', 'above')} the teacher), "
            f"KL {d.kl[0]:+.3f} ± {d.kl[1]:.3f} ({_gap(d.kl, 'below', 'above')} the teacher)."
        )
    if s.distillations:
        out.append("")
    for name, why in skipped.items():
        out.append(f"Not run: {name} ({why}).")
    return "\n".join(out) + "\n"


_MARK = {"holds": "✓", "reversed": "✗", "unresolved": "~", "beyond": "—"}


def _verdict_tables(verdicts: Sequence[Verdict], cells_are: str) -> list[str]:
    """One table per J-BOND run (a row per other method, a column per budget) and its count of outcomes."""
    out = []
    for j in dict.fromkeys(v.jbond for v in verdicts):
        out += [f"| {j} vs | " + " | ".join(f"KL <= {b:g}" for b in BUDGETS) + " |", "|---|" + "---|" * len(BUDGETS)]
        for r in dict.fromkeys(v.other for v in verdicts):
            cells = [v for v in verdicts if v.jbond == j and v.other == r]
            out.append(
                f"| {r} | "
                + " | ".join(
                    "—" if v.outcome == "beyond" else f"{v.diff:+.3f} ± {v.se:.3f} {_MARK[v.outcome]}" for v in cells
                )
                + " |"
            )
        counts = {o: sum(v.outcome == o for v in verdicts if v.jbond == j) for o in _MARK}
        out += [
            "",
            f"{j}: holds in {counts['holds']}, reversed in {counts['reversed']}, unresolved in "
            f"{counts['unresolved']} of the {sum(counts.values()) - counts['beyond']} compared {cells_are} cells.",
            "",
        ]
    return out


def _gap(value: tuple[float, float], below: str, above: str) -> str:
    m, se = value
    return below if m < -Z * se else above if m > Z * se else f"within {Z:g} standard errors of"


def plot(s: Summary, families: dict[str, str], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    styles = {
        "J-BOND": ("-", 2.2),
        "REINFORCE": ("--", 1.3),
        "BOND": ("-.", 1.6),
        "ReST": (":", 2.0),
        "GKD": ((0, (5, 1, 1, 1, 1, 1)), 2.0),
    }
    colours = plt.get_cmap("tab10" if len(s.curves) <= 10 else "tab20")  # a colour of its own for every curve
    for ax, key, label in (
        (axes[0], "kl", "KL(pi || ref), k1 = log pi - log ref"),
        (axes[1], "kl_tokenwise", "KL(pi || ref), tokenwise (lower variance)"),
    ):
        (line,) = ax.plot(
            s.bon_kl,
            [m for m, _ in s.bon_reward],
            color="black",
            linewidth=1.5,
            label="Best-of-N, n = 1..64 (log n - (n-1)/n)",
        )
        ax.fill_between(
            s.bon_kl,
            [m - e for m, e in s.bon_reward],
            [m + e for m, e in s.bon_reward],
            color=line.get_color(),
            alpha=0.15,
        )
        for i, c in enumerate(s.curves):
            style, width = styles.get(families.get(c.name, ""), (":", 1.2))
            xs = [m for m, _ in getattr(c, key)]
            ys = [m for m, _ in c.reward]
            ax.errorbar(
                xs,
                ys,
                xerr=[e for _, e in getattr(c, key)],
                yerr=[e for _, e in c.reward],
                linestyle=style,
                linewidth=width,
                marker="o",
                markersize=3,
                capsize=2,
                color=colours(i % colours.N),
                label=c.name,
            )
            ax.fill_between(
                xs,
                [y - e for y, (_, e) in zip(ys, c.reward, strict=True)],
                [y + e for y, (_, e) in zip(ys, c.reward, strict=True)],
                color=colours(i % colours.N),
                alpha=0.12,
            )
        far = [f"{c.name} (KL {m:.1f})" for c in s.curves for m, _ in getattr(c, key)[-1:] if m > 2 * s.bon_kl[-1]]
        ax.set_xlim(-0.1, 2 * s.bon_kl[-1])  # an unstable run's KL must not squeeze every other curve
        if far:
            ax.text(0.02, 0.98, "off the axis: " + ", ".join(far), transform=ax.transAxes, fontsize=7, va="top")
        ax.set_xlabel(label + ", nats")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out reward (mean ± s.e. over seeds)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("reward vs KL to the reference: every method over seeds, and the Best-of-N curve")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
