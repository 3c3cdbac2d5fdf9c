"""What a run leaves in its run dir besides stats: TensorBoard events, eval rows, HF exports, pruned checkpoints.

One short job on a real local Ray (the fixtures of test_job.py), checked for all of them at once.
"""

import json

import pytest
from test_job import ROOT, smoke_job, stats_rows

from cluster.main import run
from cluster.training import checkpoints


@pytest.mark.timeout(300)
def test_tensorboard_eval_exports_and_retention(local_ray, tiny_dir, tmp_path):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = smoke_job(
        tmp_path,
        tiny_dir,
        run__steps=3,
        run__checkpoint_every=1,
        run__keep_checkpoints=2,
        run__export_every=2,
        eval__every_steps=2,
        eval__prompts__path=ROOT / "configs" / "review_prompts_eval.jsonl",
        eval__num_prompts=4,
        eval__samples_per_prompt=2,
    )
    summary = run(job)

    # evaluation before the first step, every 2 steps and after the last: greedy and sampled each time
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [(r["step"], r["mode"]) for r in rows] == [(s, m) for s in (0, 2, 3) for m in ("greedy", "sampled")]
    assert all(r["prompts"] == 4 for r in rows)
    assert [r["completions"] for r in rows[:2]] == [4, 8]
    sampled = {r["step"]: r for r in rows if r["mode"] == "sampled"}
    assert sampled[0]["kl_ref"] == pytest.approx(0.0, abs=1e-5)  # before any update pi is pi_ref
    assert sampled[3]["kl_ref"] != pytest.approx(0.0, abs=1e-5)
    assert all(r["kl_ref"] is None for r in rows if r["mode"] == "greedy")
    assert summary["eval_last"]["sampled"]["step"] == 3
    assert "held-out evaluation (4 prompts)" in (tmp_path / "summary.txt").read_text()
    # against the reference's Best-of-N curve, drawn once (32 samples per prompt: N = 1 .. 16) into the run dir
    assert [p["n"] for p in json.loads((tmp_path / "bon_curve.json").read_text())] == list(range(1, 17))
    assert sampled[0]["effective_n"] == pytest.approx(1.0, abs=1e-3) and sampled[3]["effective_n"] > 1.0
    assert all(r["bon_gap"] is not None and 0 < r["distinct_2"] <= 1 for r in sampled.values())
    # J-BOND's anchor (its actors' samples, its KL from the learner group): the reference at first, then moving
    assert sampled[0]["anchor_effective_n"] == pytest.approx(1.0, abs=1e-3) and sampled[3]["anchor_effective_n"] >= 1
    assert sampled[3]["anchor_effective_n_predicted"] == pytest.approx(2 ** (job.algorithm.eta * 3))
    assert "anchor effective N at step 3" in (tmp_path / "summary.txt").read_text()
    assert (tmp_path / "plots" / "bon_frontier.png").exists()

    # TensorBoard: the stats.jsonl scalars per step, the eval scalars per evaluation, the sample tables
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    stats = stats_rows(tmp_path)
    for key in ("reward_policy", "kl_ref", "loss", "grad_norm", "lr"):
        points = events.Scalars(f"train/{key}")
        assert [p.step for p in points] == [1, 2, 3]
        assert [p.value for p in points] == pytest.approx([r[key] for r in stats], rel=1e-6)
    assert {"time/sample_s", "time/learn_s", "eval/greedy/reward", "eval/sampled/kl_ref"} <= set(scalars)
    assert [p.step for p in events.Scalars("eval/sampled/kl_ref")] == [0, 2, 3]
    assert [p.step for p in events.Scalars("eval/sampled/bon_gap")] == [0, 2, 3]
    assert [p.step for p in events.Scalars("eval/sampled/anchor_effective_n")] == [0, 2, 3]
    assert any(t.startswith("eval_samples/greedy") for t in events.Tags()["tensors"])

    # exports every 2 steps (a loadable HF directory), the newest 2 checkpoints kept
    export = checkpoints.export_path(tmp_path, 2)
    assert (export / "config.json").exists() and list(export.glob("*.safetensors"))
    assert list(export.glob("tokenizer*")), "an export must be loadable on its own (tokenizer beside the weights)"
    assert not checkpoints.export_path(tmp_path, 1).exists() and not checkpoints.export_path(tmp_path, 3).exists()
    assert [s for s, _ in checkpoints.sealed(tmp_path)] == [2, 3]
