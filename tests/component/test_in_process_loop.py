"""The training loop on the in-process system (HF sampler, in-process reward model, plain-torch learner):
the same loop.train as the Ray system, so its bookkeeping is checked here without Ray, for every algorithm's
sampling plan (bond/sampling_plan.py)."""

import math
import re
from pathlib import Path

import pytest

from bond.records import Role
from bond.sampling_plan import sampling_plan
from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.config.prompts import PromptCursor, load_prompts
from cluster.core import LoopState
from cluster.runtime.in_process import in_process_system
from cluster.runtime.mode import PROBE_STEPS
from cluster.training import evaluation
from cluster.training.loop import train

ROOT = Path(__file__).resolve().parents[2]


def in_process_job(tiny_dir, *overrides: str) -> JobConfig:
    data = loading.load_document(ROOT / "configs" / "smoke.yaml")
    for a in (
        f"models.policy={tiny_dir / 'policy'}",
        f"reward.path_or_name={tiny_dir / 'reward'}",
        f"prompts.path={ROOT / 'configs' / 'review_prompts.jsonl'}",
        "models.sampler_backend=hf",
        "learner.zero_stage=0",
        "run.steps=2",
        *overrides,
    ):
        loading.apply_override(data, a)
    return loading.build(JobConfig, data)


def test_two_steps_in_process(tiny_dir, tmp_path):
    job = in_process_job(tiny_dir)
    system = in_process_system(job)
    records = []
    prompts = load_prompts(job.prompts).prompts
    final = train(job, system, prompts, LoopState(0, PromptCursor()), records.append)
    assert final.step == 2 and final.cursor == PromptCursor(*divmod(2 * job.algorithm.prompts_per_step, len(prompts)))
    assert [r.stats.step for r in records] == [1, 2]
    for r in records:
        policy = [s for s in r.samples if s.completion.role is Role.POLICY]
        anchor = [s for s in r.samples if s.completion.role is Role.ANCHOR]
        assert len(policy) == job.algorithm.prompts_per_step and len(anchor) == job.algorithm.n * len(policy)
        assert {s.completion.weights_version for s in r.samples} == {r.stats.step - 1}  # on-policy
        assert r.stats.policy_version == r.stats.anchor_version == r.stats.step
        assert set(r.seconds) == {"sample", "score", "learn", "sync"} and r.syncs[Role.POLICY].num_bytes > 0
    # the actors now hold the learner's weights: same log-probs on the same sequence
    ids = [list(records[-1].samples[0].completion.token_ids)]
    prompt = [records[-1].samples[0].completion.prompt]
    system.learner.export_hf(tmp_path / "exported")
    from actors.hf_sampler import HfSampler

    exported = HfSampler(str(tmp_path / "exported"), Role.POLICY).score_logprobs(prompt, ids)
    assert abs(system.samplers.actors[Role.POLICY][0].score_logprobs(prompt, ids)[0] - exported[0]) < 1e-4


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "overrides",
    [
        ("algorithm.algorithm=reinforce", "algorithm.rloo_k=3"),
        ("algorithm.algorithm=bond", "algorithm.n=4", "algorithm.k_quantile=6"),
        (
            "algorithm.algorithm=bond",
            "algorithm.n=2",
            "algorithm.k_quantile=3",
            "algorithm.iterated=true",
            "algorithm.anchor_copy_every=2",
            "run.steps=3",
        ),
        ("algorithm.algorithm=gkd", "algorithm.gkd_teacher={policy}"),
    ],
    ids=["reinforce-rloo", "bond", "iterated-bond", "gkd"],
)
def test_each_algorithm_trains_in_process(tiny_dir, overrides):
    """A short run of each algorithm: the plan's samples per prompt and role, the pushes (never to the frozen
    reference; a copied anchor only when copied), the loss halves it has; for bond, the Best-of-N baseline on
    the same reference actor. gkd's teacher is the policy itself here: only its sampling plan is under test."""
    job = in_process_job(tiny_dir, *(o.format(policy=tiny_dir / "policy") for o in overrides))
    plan, B = sampling_plan(job.algorithm), job.algorithm.prompts_per_step
    system = in_process_system(job)
    records = []
    prompts = load_prompts(job.prompts).prompts
    train(job, system, prompts, LoopState(0, PromptCursor()), records.append)
    assert [r.stats.step for r in records] == list(range(1, job.run.steps + 1))
    for r in records:
        counts = {role: sum(s.completion.role is role for s in r.samples) for role in Role}
        assert counts == {role: B * dict(plan.draws).get(role, 0) for role in Role}
        assert Role.REFERENCE not in r.syncs and {
            s.completion.weights_version for s in r.samples if s.completion.role is Role.REFERENCE
        } <= {0}
        assert all(math.isfinite(v) for v in (r.stats.loss, r.stats.loss_bw, r.stats.kl_ref, r.stats.grad_norm))
        assert (r.stats.loss_fw != 0.0) == (plan.target_role is not None)  # the SFT half on Best-of-n samples
        assert math.isnan(r.stats.reward_anchor) == (plan.target_role is None)
    if job.algorithm.anchor_copy_every:  # copied after step 2 only: pushed at steps 1 (first) and 2, not 3
        assert [Role.ANCHOR in r.syncs for r in records] == [True, True, False]
        assert [r.stats.anchor_version for r in records] == [0, 2, 2]
        assert {s.completion.weights_version for s in records[2].samples if s.completion.role is Role.ANCHOR} == {2}
    if plan.target_role is Role.REFERENCE:
        # the Best-of-N baseline from the job's own (frozen) reference actors
        curve = evaluation.bon_curve(system, job, prompts[:4], Role.REFERENCE, max_n=4, samples_per_prompt=8)
        assert [c.n for c in curve] == [1, 2, 3, 4] and curve[0].kl_ref == 0.0  # E[max of n] rises with n:
        assert all(a.reward <= b.reward + 1e-9 for a, b in zip(curve, curve[1:], strict=False))
        assert curve[3].kl_ref == pytest.approx(math.log(4) - 0.75)


class QueueDepths:
    """The loop's metrics calls, keeping the requests in flight after each step's samples came back."""

    def __init__(self):
        self.depths: list[int] = []

    def record_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def record_skip(self, reason: str, count: int) -> None:
        raise AssertionError(f"no sample may be redrawn here: {count} {reason}")


@pytest.mark.timeout(300)
def test_auto_mode_probes_both_modes_then_keeps_one(tiny_dir):
    """run.mode auto reaching the loop (cluster.main resolved it to a probe): PROBE_STEPS steps sync, PROBE_STEPS
    pipelined, one line with the medians, then the faster; every step trains exactly once, in prompt order, and a
    switch back to sync first takes the step already requested."""
    job = in_process_job(tiny_dir, "run.mode=auto", "run.steps=8")
    system, records, lines, metrics = in_process_system(job), [], [], QueueDepths()
    prompts = load_prompts(job.prompts).prompts
    final = train(job, system, prompts, LoopState(0, PromptCursor()), records.append, metrics, lines.append)
    assert [r.stats.step for r in records] == list(range(1, 9)) and final.step == 8
    assert final.cursor == PromptCursor(*divmod(8 * job.algorithm.prompts_per_step, len(prompts)))
    assert len(lines) == 1 and re.fullmatch(
        rf"run.mode auto: median s/step sync \d+\.\d{{3}}, pipelined \d+\.\d{{3}}: (sync|pipelined) from step "
        rf"{2 * PROBE_STEPS + 1}",
        lines[0],
    ), lines
    kept = [1, 0] if lines[0].endswith(f"pipelined from step {2 * PROBE_STEPS + 1}") else [0, 0]
    assert metrics.depths == [0] * PROBE_STEPS + [1] * PROBE_STEPS + kept  # pipelined: the next step in flight
