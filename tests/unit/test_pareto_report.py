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
    bon = [
        [{"n": n, "kl_ref": math.log(n) - (n - 1) / n, "reward": math.log(n) + s} for n in (1, 2, 4)]
        for s in (0.0, 0.2)
    ]
    s = pr.summarise({"J-BOND eta=0.05": jbond, "REINFORCE beta_RL=0.1": reinforce, "REINFORCE beta_RL=1": tied}, bon)
    j = s.curves[0]
    assert j.reward[1] == pytest.approx((1.0, 0.1 / math.sqrt(3)))
    outcomes = {(v.other, v.budget): v.outcome for v in s.verdicts}
    assert outcomes[("REINFORCE beta_RL=0.1", 0.5)] == "holds"  # +0.8 with s.e. 0.08
    assert outcomes[("REINFORCE beta_RL=1", 0.5)] == "unresolved"  # same mean, wide seeds
    assert outcomes[("REINFORCE beta_RL=0.1", 0.25)] == "unresolved"  # both still at step 0
    assert s.bon_reward[0] == pytest.approx((0.1, 0.1))
    assert s.bon_front[0] == pytest.approx(math.log(2) + 0.1)  # n = 2 fits KL <= 0.25, n = 4 does not
    text = pr.markdown(
        s, {"BOND N=4": "not in this checkout"}, seeds=[0, 1, 2], command="python -m bench.pareto", minutes=1.0
    )
    assert "+0.800 ± 0.082 ✓" in text and "Not run: BOND N=4" in text
    assert outcomes[("REINFORCE beta_RL=0.1", 1.0)] == "beyond"  # neither run went past KL 0.6
    assert j.reach == pytest.approx((0.6, 0.0))


def test_the_family_beyond_reinforce_is_compared_and_a_student_against_its_teacher(tmp_path):
    teacher = [_rows([(0.0, 0.0), (1.0, 1.0 + d), (2.0, 1.2 + d)]) for d in (0.0, 0.1, -0.1)]
    student = [_rows([(0.0, 0.0), (0.5, 0.6 + d), (1.0, 0.8 + d)]) for d in (0.0, 0.1, -0.1)]  # teacher - 0.4
    rest = [_rows([(0.0, 0.0), (0.3, 0.1 + d), (0.6, 0.2 + d)]) for d in (0.0, 0.05, -0.05)]
    reinforce = [_rows([(0.0, 0.0), (0.3, 0.2), (0.6, 0.2)])] * 3
    bon = [[{"n": n, "kl_ref": math.log(n) - (n - 1) / n, "reward": math.log(n)} for n in (1, 2, 4)]]
    runs = {
        "J-BOND eta=0.2": teacher,
        "REINFORCE beta_RL=1": reinforce,
        "ReST q=0.8,0.9": rest,
        "GKD from J-BOND eta=0.2": student,
    }
    s = pr.summarise(runs, bon, teachers={"GKD from J-BOND eta=0.2": "J-BOND eta=0.2"})
    assert {v.other for v in s.verdicts} == {"REINFORCE beta_RL=1"}  # the paper's claim: REINFORCE only
    assert {v.other for v in s.family_verdicts} == {"ReST q=0.8,0.9", "GKD from J-BOND eta=0.2"}
    (d,) = s.distillations
    assert d.reward == pytest.approx((-0.4, 0.0), abs=1e-9) and d.kl == pytest.approx((-1.0, 0.0), abs=1e-9)
    text = pr.markdown(s, {}, seeds=[0, 1, 2], command="python -m bench.pareto", minutes=1.0)
    assert (
        "GKD from J-BOND eta=0.2 vs its teacher J-BOND eta=0.2 (last evaluation, paired by seed): reward "
        "-0.400 ± 0.000 (below the teacher)" in text
    )
    assert "| ReST q=0.8,0.9 |" in text and "compared (method, KL budget) cells" in text
    families = {
        "J-BOND eta=0.2": "J-BOND",
        "REINFORCE beta_RL=1": "REINFORCE",
        "ReST q=0.8,0.9": "ReST",
        "GKD from J-BOND eta=0.2": "GKD",
    }
    pr.plot(s, families, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
