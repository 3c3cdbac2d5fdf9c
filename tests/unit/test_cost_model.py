"""bench/cost_model.py: the planning model's invariants (it predicts, so its tests check structure, not numbers)."""

import json

from bench.cost_model import MODELS, Hardware, Layout, Workload, check, default_layouts, phase_seconds, step_seconds


def test_overlap_rule():
    phases = {"sample": 1.0, "score": 0.5, "learn": 2.0, "sync": 0.25}
    assert step_seconds(phases, pipelined=False) == 3.75
    assert step_seconds(phases, pipelined=True) == 2.25


def test_more_gpus_and_fewer_tokens_cost_less():
    model, work, hw = MODELS["7B"], Workload(), Hardware()
    small = phase_seconds(
        model, work, hw, Layout("s", 8, colocated=False, actor_gpus=4, reward_gpus=1, learner_gpus=3, tensor_parallel=2)
    )
    big = phase_seconds(
        model,
        work,
        hw,
        Layout("b", 16, colocated=False, actor_gpus=8, reward_gpus=2, learner_gpus=6, tensor_parallel=2),
    )
    assert all(big[k] < small[k] for k in ("sample", "score", "learn"))
    short = phase_seconds(model, Workload(completion_tokens=64), hw, default_layouts(8, 2)[1])
    assert short["sample"] < small["sample"]


def test_layouts_use_every_gpu_once():
    for gpus, tp in ((2, 1), (8, 1), (8, 2), (16, 4)):
        colocated, split = default_layouts(gpus, tp)
        assert colocated.colocated and colocated.gpus == gpus
        assert split.actor_gpus + split.reward_gpus + split.learner_gpus == gpus and split.learner_gpus >= 1


def test_check_reads_phases_from_stats(tmp_path):
    rows = [{"phase_seconds": {"sample": 1.0, "score": 0.5, "learn": 2.0, "sync": 0.5}}] * 4
    sync = tmp_path / "sync.jsonl"
    sync.write_text("".join(json.dumps(r) + "\n" for r in rows))
    piped = tmp_path / "piped.jsonl"
    piped.write_text(
        "".join(
            json.dumps({"phase_seconds": {"sample": 0.1, "score": 0.4, "learn": 2.0, "sync": 0.5}}) + "\n" for _ in rows
        )
    )
    text = check(sync, piped, skip=1)
    assert "predicted pipelined step (max(sample+score, learn+sync)): 2.500s" in text
    assert "measured pipelined step" in text and "= 0.83" in text
