"""What a run shows of its evaluations against Best-of-N: eval.jsonl rows, the summary's columns, the plot, and the
hacking monitors' distinct-n."""

import math

from cluster.core import EvalResult
from cluster.outputs import report
from cluster.outputs.run_log import eval_table
from cluster.training.evaluation import distinct_n


def test_distinct_n_counts_n_grams_within_each_completion():
    sequences = [[1, 2, 1, 2], [1, 2]]
    assert distinct_n(sequences, 1) == 2 / 6
    assert distinct_n(sequences, 2) == 2 / 4  # (1, 2) three times, (2, 1) once; none across the two completions
    assert math.isnan(distinct_n([[7]], 2))


def result(step, **fields):
    base = dict(step=step, mode="sampled", prompts=2, completions=8, reward=0.5, reward_std=0.1, kl_ref=0.3)
    base |= dict(kl_ref_tokenwise=0.25, kl_ref_k3=0.2, kl_ref_sem=0.1, kl_ref_tokenwise_sem=0.05, tokens=6.0)
    return EvalResult(**base, seconds=1.0, samples=(), **fields)


def test_eval_rows_write_nan_as_null_and_the_summary_shows_effective_n_and_the_gap():
    rows = [result(0, effective_n=1.0, bon_gap=-0.02).row(), result(20, effective_n=3.25, bon_gap=math.nan).row()]
    assert rows[1]["bon_gap"] is None and rows[1]["effective_n"] == 3.25  # beyond the curve: no number
    table = eval_table(rows)
    assert "effective N" in table and "BoN gap" in table
    first, last = table.splitlines()[-2:]
    assert first.split()[-2:] == ["1.00", "-0.020"] and last.split()[-2:] == ["3.25", "-"]


def test_the_summary_shows_the_anchors_effective_n_beside_the_prediction():
    rows = [result(0, anchor_effective_n=1.0, anchor_effective_n_predicted=1.0).row()]
    rows.append(result(20, anchor_effective_n=1.5, anchor_effective_n_predicted=math.nan).row())  # hard copies
    assert rows[1]["anchor_effective_n_predicted"] is None
    lines = eval_table(rows).splitlines()[-2:]
    assert lines[0] == "anchor effective N at step 0: 1.00 (the EMA schedule's 2^(eta t): 1.00)"
    assert lines[1] == "anchor effective N at step 20: 1.50 (the EMA schedule's 2^(eta t): -)"
    assert "anchor" not in eval_table([result(0).row()])  # not J-BOND: no anchor lines


def test_the_bon_plot_puts_the_evaluations_over_the_curve(tmp_path):
    curve = [{"n": n, "kl_ref": math.log(n) - (n - 1) / n, "reward": 0.1 * n, "reward_sem": 0.0} for n in (1, 2, 3, 4)]
    evals = [result(0).row(), result(20).row(), {**result(20).row(), "mode": "greedy", "kl_ref_tokenwise": None}]
    (path,) = report.plot_bon(evals, curve, tmp_path)
    assert path.name == "bon_frontier.png" and path.stat().st_size > 1000
    assert report.plot_bon(evals, [], tmp_path) == []
