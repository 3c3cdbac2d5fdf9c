"""bench/pareto_report.py: fronts at KL budgets, seeds' mean and standard error, and the claim's verdicts."""

import math

import pytest

from bench import pareto_report as pr


def _rows(points):
    return [{"step": 10 * i, "reward": r, "kl_ref": k, "kl_ref_tokenwise": k} for i, (k, r) in enumerate(points)]


def test_front_is_the_best_reward_within_the_budget():
    rows = _rows([(0.0, -1.0), (0.4, 0.5), (0.9, 0.2), (3.0, 2.0)])
    assert [pr.front(rows, b) for b in (0.25, 0.5, 1.0, 2.0, 4.0)] == [-1.0, 0.5, 0.5, 0.5, 2.0]
    assert pr.BUDGETS == tuple(sorted(pr.BUDGETS))


def test_summary_means_standard_errors_and_verdicts():
    jbond = [_rows([(0.0, 0.0), (0.3, 1.0 + d), (0.6, 1.0 + d)]) for d in (0.0, 0.1, -0.1)]
    reinforce = [_rows([(0.0, 0.0), (0.3, 0.2 + d), (0.6, 0.2 + d)]) for d in (0.0, 0.1, -0.1)]
    tied = [_rows([(0.0, 0.0), (0.3, 1.0 + d), (0.6, 1.0 + d)]) for d in (0.3, -0.3, 0.0)]
    bon = [[{"n": n, "kl_ref": math.log(n) - (n - 1) / n, "reward": math.log(n) + s} for n in (1, 2, 4)]
           for s in (0.0, 0.2)]
    s = pr.summarise({"J-BOND eta=0.05": jbond, "REINFORCE beta_RL=0.1": reinforce, "REINFORCE beta_RL=1": tied}, bon)
    j = s.curves[0]
    assert j.reward[1] == pytest.approx((1.0, 0.1 / math.sqrt(3)))
    outcomes = {(v.other, v.budget): v.outcome for v in s.verdicts}
    assert outcomes[("REINFORCE beta_RL=0.1", 0.5)] == "holds"  # +0.8 with s.e. 0.08
    assert outcomes[("REINFORCE beta_RL=1", 0.5)] == "unresolved"  # same mean, wide seeds
    assert outcomes[("REINFORCE beta_RL=0.1", 0.25)] == "unresolved"  # both still at step 0
    assert s.bon_reward[0] == pytest.approx((0.1, 0.1))
    assert s.bon_front[0] == pytest.approx(math.log(2) + 0.1)  # n = 2 fits KL <= 0.25, n = 4 does not
    text = pr.markdown(s, {"BOND N=4": "not in this checkout"}, seeds=[0, 1, 2], command="python -m bench.pareto",
                       minutes=1.0)
    assert "+0.800 ± 0.082 ✓" in text and "Not run: BOND N=4" in text
    assert outcomes[("REINFORCE beta_RL=0.1", 1.0)] == "beyond"  # neither run went past KL 0.6
    assert j.reach == pytest.approx((0.6, 0.0))
