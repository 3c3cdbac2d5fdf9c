"""The training loop on the in-process system (HF sampler, in-process reward model, plain-torch learner):
the same loop.train as the Ray system, so its bookkeeping is checked here without Ray."""

from pathlib import Path

from bond.records import Role
from cluster import config_loading
from cluster.in_process_system import InProcessSystem
from cluster.job_config import JobConfig
from cluster.loop import LoopState, train
from cluster.prompts import PromptCursor, load_prompts

ROOT = Path(__file__).resolve().parents[2]


def test_two_steps_in_process(tiny_dir, tmp_path):
    data = config_loading.load_document(ROOT / "configs" / "smoke.yaml")
    for a in (f"models.policy={tiny_dir / 'policy'}", f"reward.path_or_name={tiny_dir / 'reward'}",
              f"prompts.path={ROOT / 'configs' / 'review_prompts.jsonl'}", "models.sampler_backend=hf",
              "learner.zero_stage=0", "run.steps=2"):
        config_loading.apply_override(data, a)
    job = config_loading.build(JobConfig, data)
    system = InProcessSystem(job)
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
    system.export_hf(tmp_path / "exported")
    from actors.hf_sampler import HfSampler

    exported = HfSampler(str(tmp_path / "exported"), Role.POLICY).score_logprobs(prompt, ids)
    assert abs(system.actors[Role.POLICY][0].score_logprobs(prompt, ids)[0] - exported[0]) < 1e-4
