"""A chat model end to end on a real local Ray: the tiny Qwen2 (tied embeddings, ChatML template) trained
with message-list prompts, then checked for the data contract, the weight push and the export at once."""

import json
from pathlib import Path

import pytest
import ray

from bond.records import ChatMessage, Prompt, Role
from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.main import run
from cluster.runtime.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CHAT_PROMPT = Prompt(messages=(ChatMessage("user", "the movie"),))
RENDERED = "<|im_start|>user\nthe movie<|im_end|>\n<|im_start|>assistant\n"


def chat_job(tmp_path: Path, tiny_dir: Path) -> JobConfig:
    data = loading.load_document(ROOT / "configs" / "smoke.yaml")
    for assignment in (
        f"models.policy={tiny_dir / 'qwen_policy'}",
        f"reward.path_or_name={tiny_dir / 'reward'}",
        f"prompts.path={ROOT / 'configs' / 'chat_prompts.jsonl'}",
        "prompts.max_prompt_length=16",
        f"reward.http_port={free_port()}",
        f"run.run_dir={tmp_path}",
        "run.progress=false",
        "run.show_samples=2",
        "run.steps=2",
        "run.checkpoint_every=0",
    ):
        loading.apply_override(data, assignment)
    return loading.build(JobConfig, data)


@pytest.mark.timeout(600)
def test_chat_job_on_tiny_qwen2(tiny_dir, tmp_path):
    from actors.hf_sampler import HfSampler
    from actors.vllm_sampler import VllmSampler
    from cluster.outputs.episodes import read_episodes
    from cluster.runtime.ray_system import start_system

    job = chat_job(tmp_path, tiny_dir)
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        summary = run(job)  # the whole job: message prompts, Serve reward, DeepSpeed learner, export
        assert summary["steps"] == 2
        rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
        assert [r["policy_version"] for r in rows] == [1, 2]
        episodes = read_episodes(tmp_path / "episodes").to_pylist()
        assert len(episodes) == 2 * job.algorithm.prompts_per_step * (1 + job.algorithm.n)
        # the policy read its chat template (no BOS: Qwen2 has none) and finished its turn with <|im_end|>
        assert all(
            e["observation"].startswith("<|im_start|>user\n")
            and e["observation"].endswith("<|im_end|>\n<|im_start|>assistant\n")
            for e in episodes
        )
        assert any(e["finish_reason"] == "stop" for e in episodes)
        assert "samples after training" in (tmp_path / "summary.txt").read_text()

        # weights after a push equal the learner's: a fresh system, 2 steps, compare served and exported log-probs
        system = start_system(job)
        try:
            from cluster.config.prompts import PromptCursor, load_prompts
            from cluster.core import LoopState
            from cluster.training.loop import train

            train(job, system, load_prompts(job.prompts).prompts, LoopState(0, PromptCursor()), lambda rec: None)
            system.learner.export_hf(tmp_path / "learner_policy")
            actor = system.samplers.fleet.actors[Role.POLICY][0]
            ids = [[261, 346, 2], [349, 2]]  # two short replies (token ids of the tiny BPE), ending <|im_end|>
            served = ray.get(actor.score_logprobs.remote([CHAT_PROMPT, CHAT_PROMPT], ids))
            rendered = ray.get(actor.render.remote([CHAT_PROMPT]))[0]
        finally:
            system.shutdown()
    finally:
        ray.shutdown()
    assert rendered.text == RENDERED
    exported = HfSampler(str(tmp_path / "learner_policy"), Role.POLICY)
    assert served == pytest.approx(exported.score_logprobs([CHAT_PROMPT, CHAT_PROMPT], ids), abs=1e-4)
    untrained = HfSampler(str(tiny_dir / "qwen_policy"), Role.POLICY).score_logprobs([CHAT_PROMPT] * 2, ids)
    assert max(abs(a - b) for a, b in zip(served, untrained, strict=True)) > 1e-3  # the update took effect

    # the run's export is a tied Qwen2 checkpoint that transformers and vLLM both load and agree on
    final = tmp_path / "final_policy"
    assert json.loads((final / "config.json").read_text())["tie_word_embeddings"] is True
    from safetensors import safe_open

    names = {n for f in final.glob("*.safetensors") for n in safe_open(str(f), "pt").keys()}  # noqa: SIM118
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    hf = HfSampler(str(final), Role.POLICY)
    assert hf.model.lm_head.weight.data_ptr() == hf.model.model.embed_tokens.weight.data_ptr()
    engine = VllmSampler(str(final), Role.POLICY, max_model_len=64)
    try:
        assert engine.render([CHAT_PROMPT])[0].text == RENDERED  # the tokenizer and its template were exported
        assert engine.score_logprobs([CHAT_PROMPT] * 2, ids) == pytest.approx(
            hf.score_logprobs([CHAT_PROMPT] * 2, ids), abs=1e-4
        )
    finally:
        engine.close()
