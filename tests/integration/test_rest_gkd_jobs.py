"""rest and gkd end to end on a real local Ray (vLLM actors, the Serve reward service, the DeepSpeed learner), each
one short job on the tiny world checked for several things at once; rest also resumes exactly mid-round."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from bond.gkd import token_jsd
from bond.rest import quantile
from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.main import run
from cluster.outputs.episodes import read_scored
from cluster.runtime.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


SERVE_PORT = free_port()


def job(run_dir: Path, tiny_dir: Path, *overrides: str) -> JobConfig:
    data = loading.load_document(ROOT / "configs" / "smoke.yaml")
    for o in (
        f"reward.http_port={SERVE_PORT}",
        f"models.policy={tiny_dir / 'policy'}",
        f"reward.path_or_name={tiny_dir / 'reward'}",
        f"prompts.path={ROOT / 'configs' / 'review_prompts.jsonl'}",
        f"run.run_dir={run_dir}",
        "run.progress=false",
        "run.show_samples=0",
        *overrides,
    ):
        loading.apply_override(data, o)
    return loading.build(JobConfig, data)


def stats_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


REST = (
    "algorithm.algorithm=rest",
    "algorithm.rest_grow_prompts=8",
    "algorithm.rest_samples_per_prompt=2",
    "algorithm.rest_quantiles=[0.0, 0.5]",
    "algorithm.lr=0.002",
    "algorithm.warmup_steps=0",
    "run.steps=4",
    "run.checkpoint_every=2",
    "eval.every_steps=2",
    "eval.num_prompts=2",
    "eval.samples_per_prompt=1",
    f"eval.prompts.path={ROOT / 'configs' / 'review_prompts_eval.jsonl'}",
)


def test_rest_grows_improves_pushes_and_resumes_exactly(local_ray, tiny_dir, tmp_path, capsys):
    full = tmp_path / "full"
    run(job(full, tiny_dir, *REST))
    assert ": 1 policy actors (" in capsys.readouterr().out  # rest samples the policy alone: no anchor actors
    rows = stats_rows(full)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    first, second = (read_scored(full / "grow" / f"step_{s:07d}.parquet") for s in (0, 3))
    assert len(first) == len(second) == 16  # 8 prompts x 2 samples; round 1 = 2 steps at q0 + 1 step at q0.5
    assert {s.completion.weights_version for s in first} == {0}
    assert {s.completion.weights_version for s in second} == {3}  # the round's end pushed the policy, then Grow
    assert rows[0]["phase_seconds"].keys() >= {"grow_sample", "grow_score", "learn"}
    assert "grow_sample" not in rows[1]["phase_seconds"] and "grow_sample" in rows[3]["phase_seconds"]
    trained = read_scored(full / "episodes" / "step_0000003.parquet")  # the q0.5 phase: rewards above the median
    median = quantile([s.reward for s in first], 0.5)
    assert len(trained) == 8 and all(s.reward >= median for s in trained)
    assert all(r["loss"] == r["loss_fw"] > 0 and math.isnan(r["reward_anchor"]) for r in rows)  # policy samples only
    evals = [json.loads(line) for line in (full / "eval.jsonl").read_text().splitlines()]
    assert sorted({e["step"] for e in evals}) == [0, 2, 4]
    assert (full / "final_policy" / "config.json").exists()

    # a crash after step 2 (mid-round): resume from its checkpoint redoes steps 3-4 exactly, Grow of round 2 included
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_0000004")
    run(job(cut, tiny_dir, *REST, "run.resume=true"))
    again = stats_rows(cut)
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(rows[2:], again[2:], strict=True):
        for key in ("loss", "reward_policy", "kl_ref", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert read_scored(cut / "grow" / "step_0000003.parquet") == second


@pytest.fixture(scope="module")
def teacher_dir(perturbed_policy):
    return perturbed_policy(1)  # the step assertions below were set with this teacher


def mean_jsd(student_dir: Path, teacher_dir: Path, samples) -> float:
    student, teacher = (
        AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32) for d in (student_dir, teacher_dir)
    )
    values = []
    with torch.no_grad():
        for s in samples:
            c = s.completion
            ids = torch.tensor([list(c.prompt_token_ids) + list(c.token_ids)])
            p, t = len(c.prompt_token_ids), len(c.token_ids)
            values.append(
                token_jsd(
                    student(input_ids=ids).logits[0, p - 1 : p - 1 + t],
                    teacher(input_ids=ids).logits[0, p - 1 : p - 1 + t],
                    0.5,
                )
            )
    return torch.cat(values).mean().item()


def test_gkd_moves_the_student_toward_the_teacher(local_ray, tiny_dir, teacher_dir, tmp_path, capsys):
    run(
        job(
            tmp_path,
            tiny_dir,
            "algorithm.algorithm=gkd",
            f"algorithm.gkd_teacher={teacher_dir}",
            "algorithm.gkd_beta=0.5",
            "algorithm.lr=0.005",
            "algorithm.warmup_steps=0",
            "run.steps=3",
            "learner.zero_stage=3",
        )
    )
    assert ": 1 policy actors (" in capsys.readouterr().out  # no anchor (or reference) actors started
    rows = stats_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["loss_fw"] == 0.0 for r in rows)
    samples = read_scored(tmp_path / "episodes" / "step_0000001.parquet")
    assert {s.completion.role.value for s in samples} == {"policy"} and len(samples) == 8  # 1 per prompt, no anchor
    assert all(math.isnan(r["reward_anchor"]) and math.isnan(r["sample_anchor_version"]) for r in rows)
    assert {s.completion.weights_version for s in samples} == {0}
    # the first step's loss is the token-mean JSD of the untrained student on its own samples
    assert rows[0]["loss"] == pytest.approx(mean_jsd(tiny_dir / "policy", teacher_dir, samples), rel=1e-4)
    before = mean_jsd(tiny_dir / "policy", teacher_dir, samples)
    after = mean_jsd(tmp_path / "final_policy", teacher_dir, samples)
    assert after < 0.9 * before, (before, after)
