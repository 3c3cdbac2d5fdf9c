"""End-to-end J-BOND on a real local Ray: vLLM actors, the Ray Serve reward service, the DeepSpeed learner.

One Ray session is shared by the in-process runs of this module (each run places and tears down its own
actors, reward service and learner); `ray job submit` gets its own head started with `ray start`.
"""

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray

from bond.records import Role
from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.main import run
from cluster.outputs.episodes import read_episodes
from cluster.runtime.ports import free_port
from cluster.training.checkpoints import newest_valid
from cluster.training.preemption import Preempted
from reward_service.spec import build_reward_model

ROOT = Path(__file__).resolve().parents[2]


SERVE_PORT = free_port()  # one Serve HTTP proxy per Ray session: every run of this module shares it


def smoke_job(tmp_path: Path, tiny_dir: Path, **overrides) -> JobConfig:
    data = loading.load_document(ROOT / "configs" / "smoke.yaml")
    loading.apply_override(data, f"reward.http_port={SERVE_PORT}")
    loading.apply_override(data, f"models.policy={tiny_dir / 'policy'}")
    loading.apply_override(data, f"reward.path_or_name={tiny_dir / 'reward'}")
    loading.apply_override(data, f"prompts.path={ROOT / 'configs' / 'review_prompts.jsonl'}")
    loading.apply_override(data, f"run.run_dir={tmp_path}")
    loading.apply_override(data, "run.progress=false")
    loading.apply_override(data, "run.show_samples=2")
    for key, value in overrides.items():
        loading.apply_override(data, f"{key.replace('__', '.')}={value}")
    return loading.build(JobConfig, data)


def stats_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def test_sync_run_end_to_end(local_ray, tiny_dir, tmp_path):
    job = smoke_job(tmp_path, tiny_dir, run__steps=3, run__checkpoint_every=1)
    summary = run(job)
    assert summary["steps"] == 3
    rows = stats_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # on-policy: the samples of step s were drawn by version s-1 of both models
        assert r["sample_policy_version"] == r["step"] - 1 == r["sample_anchor_version"]
        assert r["policy_version"] == r["anchor_version"] == r["step"]
    episodes = read_episodes(tmp_path / "episodes").to_pylist()
    B = job.algorithm.prompts_per_step
    assert len(episodes) == 3 * B * (1 + job.algorithm.n)
    assert {e["reward_model_id"] for e in episodes} and all(e["reward_model_id"] for e in episodes)
    assert all(e["weights_version"] == e["train_step"] - 1 for e in episodes)
    # streamed scoring (each actor's samples scored as they arrive) attaches each reward to its own completion
    rescored = build_reward_model(job.reward).score(
        [e["observation"] for e in episodes], [e["action"] for e in episodes]
    )
    assert [e["reward"] for e in episodes] == pytest.approx(rescored, abs=1e-4)
    for name in ("reward_kl_vs_step.png", "reward_vs_kl.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    assert (tmp_path / "final_policy" / "config.json").exists()
    assert "samples after training" in (tmp_path / "summary.txt").read_text()


@pytest.mark.timeout(600)
def test_lora_run_pushes_adapters_only_and_resumes(local_ray, tiny_dir, tmp_path):
    """learner.lora: 2 steps, then --resume for a third. Every push carries the adapters only (a small fraction of
    the model's bytes), the actors sample with each pushed version (also after the resume: the restored adapter is
    pushed), and the final export is a merged model plus the peft adapter."""
    from safetensors import safe_open

    lora = dict(learner__lora__r=4, learner__lora__alpha=8)
    run(smoke_job(tmp_path, tiny_dir, run__steps=2, run__checkpoint_every=2, **lora))
    run(smoke_job(tmp_path, tiny_dir, run__steps=3, run__checkpoint_every=2, run__resume="true", **lora))
    rows = stats_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["sample_policy_version"] == r["step"] - 1 == r["sample_anchor_version"] for r in rows)
    with safe_open(str(tiny_dir / "policy" / "model.safetensors"), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
    full_bytes = sum(4 * math.prod(shape) for shape in shapes.values())  # fp32
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # the default
    # A [4, in] and B [out, 4] per target weight [out, in], fp32
    adapter_bytes = sum(4 * 4 * sum(shape) for k, shape in shapes.items() if k.split(".")[-2] in targets)
    for r in rows:
        assert r["sync_bytes"] == {"policy": adapter_bytes, "anchor": adapter_bytes}
    assert adapter_bytes < 0.06 * full_bytes
    print(
        f"LoRA r=4 sync: {adapter_bytes} bytes per role per step, {adapter_bytes / full_bytes:.1%} of the "
        f"model's {full_bytes}"
    )
    manifest = json.loads((newest_valid(tmp_path)[0] / "manifest.json").read_text())
    assert manifest["step"] == 3 and manifest["lora"].startswith("r=4 alpha=8 ")
    assert list((tmp_path / "final_policy").glob("model*.safetensors"))  # merged (sharded at bucket_bytes)
    assert {p.name for p in (tmp_path / "final_policy" / "adapter").iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
    }


def test_pipelined_run_respects_max_staleness(local_ray, tiny_dir, tmp_path):
    """Depth 2: the actors sample steps t+1 and t+2 while the learner trains on step t, so from step 2 on the
    samples are 2 versions old, which max_staleness 2 allows (a depth beyond max_staleness is refused at start-up:
    every step would be redrawn). A stale sample is importance-weighted; a fresh one has weight exactly 1."""
    job = smoke_job(
        tmp_path, tiny_dir, run__steps=4, run__mode="pipelined", run__max_staleness=2, run__pipeline_depth=2
    )
    run(job)
    rows = stats_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for role in ("policy", "anchor"):
        lags = [(r["step"] - 1) - r[f"sample_{role}_version"] for r in rows]
        assert lags == [0, 1, 2, 2], f"{role}: step 1 fresh, then one and two versions behind: {lags}"
        weights = [r[f"importance_weight_{role}"] for r in rows]
        assert weights[0] == 1.0 and all(w != 1.0 for w in weights[1:]), weights
    episodes = read_episodes(tmp_path / "episodes").to_pylist()
    assert all(0 <= e["train_step"] - 1 - e["weights_version"] <= 2 for e in episodes)  # none older than allowed


def test_pipelined_bond_run_respects_max_staleness(local_ray, tiny_dir, tmp_path):
    """BOND-N on Ray, pipelined: a policy actor and a reference actor (frozen: its samples are all version 0, it is
    never pushed to), no anchor actor; the policy samples lag the learner by at most one version."""
    job = smoke_job(
        tmp_path,
        tiny_dir,
        run__steps=3,
        run__mode="pipelined",
        run__max_staleness=1,
        algorithm__algorithm="bond",
        algorithm__n=2,
        algorithm__k_quantile=3,
    )
    run(job)
    rows = stats_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    lags = [(r["step"] - 1) - r["sample_policy_version"] for r in rows]
    assert all(0 <= lag <= 1 for lag in lags), lags
    assert max(lags) == 1, f"pipelined mode should sample one version behind after step 1: {lags}"
    assert all(r["loss_fw"] != 0.0 and math.isnan(r["sample_anchor_version"]) for r in rows)  # no anchor samples
    episodes = read_episodes(tmp_path / "episodes").to_pylist()
    by_role = {role: [e for e in episodes if e["role"] == role] for role in ("policy", "reference", "anchor")}
    B = job.algorithm.prompts_per_step
    assert [len(by_role[r]) for r in ("policy", "reference", "anchor")] == [3 * B, 3 * B * 3, 0]
    assert {e["weights_version"] for e in by_role["reference"]} == {0}


def test_actor_weights_equal_the_learner_after_a_sync(local_ray, tiny_dir, tmp_path):
    """After steps and pushes over the collective (gloo) weight groups, the policy actor's log-probs of a sequence
    equal the learner's (fp32). (test_sync_run_end_to_end runs the object-store push: auto for the tiny model.)"""
    from cluster.config.job import WeightSyncMethod
    from cluster.config.prompts import PromptCursor, load_prompts
    from cluster.core import LoopState
    from cluster.runtime.ray_system import start_system
    from cluster.training.loop import train

    job = smoke_job(tmp_path, tiny_dir, run__steps=2, run__weight_sync="collective")
    system = start_system(job)
    try:
        # when each part came up (printed by the job), in the order they did
        assert set(system.startup) == {"placement groups", "policy-0", "anchor-0", "learner-0", "reward service"}
        assert list(system.startup.values()) == sorted(system.startup.values())
        prompts = load_prompts(job.prompts).prompts
        reports = []
        train(job, system, prompts, LoopState(0, PromptCursor()), on_step=lambda rec: reports.append(rec.syncs))
        assert [{r.method for r in syncs.values()} for syncs in reports] == [{WeightSyncMethod.COLLECTIVE}] * 2
        assert [syncs[Role.ANCHOR].version for syncs in reports] == [1, 2]
        system.learner.export_hf(tmp_path / "learner_policy")
        actor = system.samplers.fleet.actors[Role.POLICY][0]
        assert ray.get(actor.__ray_call__.remote(lambda a: a.weights_version)) == 2
        texts = ["the movie", "the plot"]
        ids = [[51, 33, 55, 25, 5, 2], [33, 13, 5, 2]]
        served = ray.get(actor.score_logprobs.remote(texts, ids))
        from actors.hf_sampler import HfSampler

        reference = HfSampler(str(tmp_path / "learner_policy"), Role.POLICY).score_logprobs(texts, ids)
        untrained = HfSampler(str(tiny_dir / "policy"), Role.POLICY).score_logprobs(texts, ids)
        assert served == pytest.approx(reference, abs=1e-4)
        assert max(abs(a - b) for a, b in zip(served, untrained, strict=True)) > 1e-3  # the update took effect
    finally:
        system.shutdown()


def test_resume_after_sigterm_reproduces_the_next_step(local_ray, tiny_dir, tmp_path):
    """SIGTERM (preemption) stops the run at the next step boundary with a checkpoint; --resume then continues
    exactly: its steps equal the uninterrupted run's."""
    full = tmp_path / "uninterrupted"
    run(smoke_job(full, tiny_dir, run__steps=3, run__checkpoint_every=1))
    cut = tmp_path / "preempted"
    # the preempted run also evaluates after every step: evaluation must not change what training does
    evals = dict(
        eval__every_steps=1,
        eval__prompts__path=ROOT / "configs" / "review_prompts_eval.jsonl",
        eval__num_prompts=2,
        eval__samples_per_prompt=2,
    )

    def preempt_after_first_step() -> None:
        deadline = time.monotonic() + 120
        while not ((cut / "stats.jsonl").exists() and (cut / "stats.jsonl").read_text()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt_after_first_step, daemon=True).start()
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:
        run(smoke_job(cut, tiny_dir, run__steps=3, run__checkpoint_every=0, **evals))
    assert stopped.value.step in (1, 2) and stopped.value.checkpoint == newest_valid(cut)[0]
    assert [r["step"] for r in stats_rows(cut)] == list(range(1, stopped.value.step + 1))
    assert signal.getsignal(signal.SIGTERM) is handler  # the previous handler is back
    run(smoke_job(cut, tiny_dir, run__steps=3, run__checkpoint_every=1, run__resume="true", **evals))
    a, b = stats_rows(full), stats_rows(cut)
    assert [r["step"] for r in b] == [1, 2, 3]
    eval_steps = [json.loads(line)["step"] for line in (cut / "eval.jsonl").read_text().splitlines()]
    assert eval_steps == [0, 0, 1, 1, 2, 2, 3, 3]  # greedy + sampled; none repeated or lost across the stop
    for step in range(stopped.value.step, 3):
        for key in ("loss", "loss_fw", "loss_bw", "reward_policy", "reward_anchor", "kl_ref", "kl_anchor", "grad_norm"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key)


def test_ray_job_submit(tiny_dir, tmp_path):
    """As README documents it: a Ray head, then `ray job submit --working-dir . -- python -m cluster.main ...`."""
    from tests.integration.job_submit import submit_smoke_job, venv_head

    if ray.is_initialized():
        ray.shutdown()
    head = venv_head(num_cpus=4)
    head.start()
    try:
        # A relative run_dir, as in configs/*.yaml: it resolves against the storage root the job is given
        # (not Ray's temporary copy of the working dir, deleted with the session).
        overrides = [
            f"models.policy={tiny_dir / 'policy'}",
            f"reward.path_or_name={tiny_dir / 'reward'}",
            "run.run_dir=runs/submitted",
            "run.steps=2",
            f"reward.http_port={free_port()}",
            "run.progress=false",
            "run.show_samples=0",
        ]
        t0 = time.time()
        log = submit_smoke_job(head, tmp_path, overrides, timeout_s=600)
        run_dir = tmp_path / "runs" / "submitted"
        assert f"run dir: {run_dir}\n" in log, log[-4000:]  # the job's own last lines, streamed back
        assert len(stats_rows(run_dir)) == 2 and (run_dir / "final_policy" / "config.json").exists()
        jobs = head.get_json("/api/jobs/")
        assert any(j["status"] == "SUCCEEDED" and "cluster.main" in j["entrypoint"] for j in jobs)
        print(f"ray job submit: {time.time() - t0:.0f} s")
    finally:
        head.stop()


@pytest.mark.timeout(300)
def test_colocated_run_and_resume(local_ray, tiny_dir, tmp_path, capsys):
    """resources.colocate: the actors sit in the learner rank's placement group (the GCS's actor table says so),
    their engines release their KV cache while the learner steps, and a resumed colocated run continues the
    versions."""
    from ray.util.state import list_actors

    def groups() -> dict[str, str]:
        """name -> placement group of every jbond actor, from Ray's state API (the dead ones included)."""
        rows = list_actors(
            address=ray.get_runtime_context().gcs_address, detail=True, limit=10_000, raise_on_missing_output=False
        )
        return {r.name: r.placement_group_id for r in rows if (r.name or "").startswith("jbond-")}

    before = set(groups())
    colocated = dict(resources__colocate="true", resources__cpus_per_learner=2, run__show_samples=0)
    run(smoke_job(tmp_path, tiny_dir, run__steps=2, run__checkpoint_every=1, **colocated))
    placed = {name.split("-")[2]: pg for name, pg in groups().items() if name not in before}
    assert set(placed) == {"policy", "anchor", "learner"} and len(set(placed.values())) == 1, placed
    out = capsys.readouterr().out
    assert "2 engines sleep while the learner steps" in out, out[-2000:]
    line = next(x for x in out.splitlines() if "KV cache at start" in x)
    released_mib = int(line.split("released ")[1].split(" MiB")[0])
    kv_mib = 2 * int(os.environ["VLLM_CPU_KVCACHE_SPACE"]) * 1024  # two engines, each its whole KV cache
    assert released_mib >= 0.9 * kv_mib, line  # the RSS the engines' processes gave back

    run(smoke_job(tmp_path, tiny_dir, run__steps=3, run__resume="true", **colocated))
    rows = stats_rows(tmp_path)
    assert [(r["step"], r["sample_policy_version"], r["sample_anchor_version"]) for r in rows] == [
        (1, 0, 0),
        (2, 1, 1),
        (3, 2, 2),
    ]
