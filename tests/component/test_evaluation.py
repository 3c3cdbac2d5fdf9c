"""training/evaluation on the in-process system: the Best-of-N curve of the reference, and after two J-BOND steps
the KL estimators against the learner's own log-probabilities and the anchor's effective N (HF sampler, plain-torch
learner: no Ray, no vLLM)."""

import json
import math
from pathlib import Path

import pytest
import torch

from bond.bon_frontier import bon_gap, effective_n
from bond.records import Role
from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.config.prompts import PromptCursor, load_prompts
from cluster.core import LoopState
from cluster.outputs.report import BON_CURVE_FILE
from cluster.runtime.in_process import in_process_system
from cluster.training import evaluation
from cluster.training.loop import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_bon_curve_then_kl_estimators_after_training(tiny_dir, tmp_path):
    data = loading.load_document(ROOT / "configs" / "smoke.yaml")
    for a in (
        f"models.policy={tiny_dir / 'policy'}",
        f"reward.path_or_name={tiny_dir / 'reward'}",
        f"prompts.path={ROOT / 'configs' / 'review_prompts.jsonl'}",
        "models.sampler_backend=hf",
        "learner.zero_stage=0",
        "run.steps=2",
        "algorithm.lr=0.005",
        "algorithm.warmup_steps=0",
        "eval.every_steps=1",
        "eval.holdout_fraction=0.25",
        "eval.samples_per_prompt=4",
        "eval.greedy=false",
        "eval.bon_samples=8",
    ):
        loading.apply_override(data, a)
    job = loading.build(JobConfig, data)
    split = evaluation.split_prompts(load_prompts(job.prompts).prompts, job.eval, job.prompts.seed)
    system = in_process_system(job)
    try:
        curve = evaluation.bon_curve(system, job, split.heldout, Role.POLICY, max_n=8, samples_per_prompt=16)
        assert [p.n for p in curve] == list(range(1, 9))
        assert curve[0].kl_ref == 0.0 and curve[-1].kl_ref == pytest.approx(math.log(8) - 7 / 8)
        rewards = [p.reward for p in curve]
        assert all(b >= a - 1e-9 for a, b in zip(rewards, rewards[1:], strict=False))  # E[max of n] grows with n
        assert rewards[-1] > rewards[0]
        with pytest.raises(ValueError, match="must be >= max_n"):
            evaluation.bon_curve(system, job, split.heldout, Role.POLICY, max_n=8, samples_per_prompt=4)

        (before,) = evaluation.evaluate(system, job, split.heldout, 0, tmp_path)
        assert before.kl_ref == pytest.approx(0.0, abs=1e-5) and before.kl_ref_tokenwise == pytest.approx(0.0, abs=1e-5)
        # the reference's curve, drawn at step 0 into the run dir: at KL 0 the policy is Best-of-1 of itself
        drawn = json.loads((tmp_path / BON_CURVE_FILE).read_text())
        assert [p["n"] for p in drawn] == [1, 2, 3, 4]
        assert before.effective_n == pytest.approx(1.0, abs=1e-3)
        assert before.bon_gap == pytest.approx(before.reward - drawn[0]["reward"], abs=1e-4)
        assert 0 < before.distinct_1 <= 1 and 0 < before.distinct_2 <= 1
        anchor_samples = system.samplers.sample(Role.ANCHOR, [p.text for p in split.heldout], 2, job.sampling)
        anchor_kl = system.learner.kl_to_reference(anchor_samples, Role.ANCHOR)
        assert anchor_kl.tokenwise.abs().max().item() < 1e-5 and anchor_kl.sampled.abs().max().item() < 1e-5
        assert before.anchor_effective_n == pytest.approx(1.0, abs=1e-3) and before.anchor_effective_n_predicted == 1
        train(job, system, split.train, LoopState(0, PromptCursor()), lambda rec: None)
        (after,) = evaluation.evaluate(system, job, split.heldout, 2, tmp_path)
        assert after.kl_ref_tokenwise > 1e-3 and after.kl_ref_k3 >= 0.0
        assert json.loads((tmp_path / BON_CURVE_FILE).read_text()) == drawn  # read back, never redrawn after step 0
        assert after.effective_n == pytest.approx(effective_n(after.kl_ref_tokenwise)) and after.effective_n > 1
        # the anchor moved off the reference by eta of each step: KL(anchor || ref) > 0, but below the policy's
        anchor_kl = system.learner.kl_to_reference(anchor_samples, Role.ANCHOR).tokenwise.mean().item()
        assert 0 < anchor_kl < after.kl_ref_tokenwise and after.anchor_effective_n >= 1
        assert after.anchor_effective_n_predicted == pytest.approx(2 ** (job.algorithm.eta * 2))
        curve = ([p["kl_ref"] for p in drawn], [p["reward"] for p in drawn])
        assert after.bon_gap == pytest.approx(bon_gap(after.reward, after.kl_ref_tokenwise, *curve), nan_ok=True)
        (tmp_path / BON_CURVE_FILE).unlink()  # a resumed run whose dir has no curve: no gap, never a redraw
        assert evaluation.evaluate(system, job, split.heldout, 2, tmp_path)[0].bon_gap is None
        assert not (tmp_path / BON_CURVE_FILE).exists()
        assert after.kl_ref_tokenwise_sem <= after.kl_ref_sem  # the Rao-Blackwellised estimator is the steadier
        # k1 from kl_to_reference is exactly the learner's log pi - log ref on the same completions
        completions = system.samplers.sample(Role.POLICY, [p.text for p in split.heldout], 2, job.sampling)
        est = system.learner.kl_to_reference(completions)
        k1 = system.learner.logprobs(completions, Role.POLICY) - system.learner.logprobs(completions, Role.REFERENCE)
        torch.testing.assert_close(est.sampled, k1, atol=1e-4, rtol=0)
        assert bool((est.tokenwise >= 0).all())
    finally:
        system.shutdown()
