"""bench/pareto.py: the variant list (every method of the family, GKD's teacher among them, ReST's sample budget
matched to J-BOND's) and the run cache (keys of earlier runs unchanged, a student's key follows its teacher)."""

import hashlib
import json
import math
from argparse import Namespace
from pathlib import Path

import pytest

from bench import pareto
from bond.config import Algorithm
from bond.rest import improve_schedule

ROOT = Path(__file__).resolve().parents[2]
BASE = pareto._base_overrides(Namespace(steps=60, prompts_per_step=16, eval_samples=8, eval_every=10))


def _job(v: pareto.Variant, out: Path = Path("runs/pareto")):
    teacher = [pareto.teacher_override(out, v.teacher, 0)] if v.teacher else []
    return pareto.build_job(ROOT / "configs" / "local.yaml", BASE + list(v.overrides) + teacher)


def test_every_method_of_the_family_is_a_valid_job_and_gkd_distils_a_jbond_run():
    vs = pareto.variants([0.05, 0.2], [0.001, 0.01, 0.1, 1.0], [4, 16])
    algorithms = {_job(v).algorithm.algorithm for v in vs}
    assert algorithms == {Algorithm.JBOND, Algorithm.REINFORCE, Algorithm.BOND, Algorithm.REST, Algorithm.GKD}
    assert len({pareto._slug(v.name) for v in vs}) == len(vs)  # one run directory per variant
    (gkd,) = [v for v in vs if v.teacher]
    teacher = next(v for v in vs if v.name == gkd.teacher)
    assert _job(teacher).algorithm.algorithm is Algorithm.JBOND and _job(teacher).algorithm.eta == 0.2
    assert _job(gkd, Path("out")).algorithm.gkd_teacher == "out/jbond_eta0.2/seed0/final_policy"
    assert [v.name for v in pareto.variants([0.2], [1.0], [], rest=False, gkd_teacher_eta=None)] == [
        "J-BOND eta=0.2",
        "REINFORCE beta_RL=1",
    ]


def test_rest_draws_about_jbonds_samples_in_the_same_steps():
    job = _job(next(v for v in pareto.variants([], [], []) if v.family == "ReST"))
    algo = job.algorithm
    grown = algo.rest_grow_prompts * algo.rest_samples_per_prompt
    rewards = [math.sin(i) for i in range(grown)]  # continuous: no ties at the thresholds
    steps_per_round = sum(
        len(p.batches) for p in improve_schedule(rewards, algo.rest_quantiles, algo.prompts_per_step, seed=0)
    )
    rest_samples = math.ceil(job.run.steps / steps_per_round) * grown
    jbond_samples = job.run.steps * algo.prompts_per_step * 3  # 1 policy + 2 anchor samples per prompt
    assert abs(rest_samples - jbond_samples) <= 0.1 * jbond_samples, (rest_samples, jbond_samples)


def test_cache_keys_unchanged_for_plain_runs_and_following_the_teachers_weights(tmp_path):
    overrides = BASE + ["run.seed=0"]
    assert pareto.run_key(overrides) == hashlib.sha256(json.dumps(overrides).encode()).hexdigest()[:16]
    teacher = tmp_path / "final_policy"
    teacher.mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        pareto.run_key(overrides, teacher)
    (teacher / "model.safetensors").write_bytes(b"one")
    first = pareto.run_key(overrides, teacher)
    (teacher / "model.safetensors").write_bytes(b"two")
    assert pareto.run_key(overrides, teacher) not in (first, pareto.run_key(overrides))

    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"key": "k", "eval": []}))
    assert pareto.cached(run, "k", export=False) == {"key": "k", "eval": []}
    assert pareto.cached(run, "other", export=False) is None
    assert pareto.cached(run, "k", export=True) is None  # a teacher's run without its export is redone
    (run / pareto.FINAL_POLICY).mkdir()
    (run / pareto.FINAL_POLICY / "config.json").write_text("{}")
    assert pareto.cached(run, "k", export=True) is not None
