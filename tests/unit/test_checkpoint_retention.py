"""Checkpoint retention, export cadence and the layout check, on real sealed checkpoint directories."""

import json

import pytest

from bond.records import Prompt
from cluster.config.job import EvalConfig
from cluster.training import checkpoints, evaluation
from learner import checkpoint_dir
from learner.checkpoint_dir import CheckpointError

LAYOUT = {"world_size": 2, "zero_stage": 3, "dtype": "fp32"}


def save(run_dir, step, sha256=True, layout=LAYOUT):
    """A checkpoint as Learner.save leaves it: files in <dir>.partial, sealed with a manifest, renamed."""
    final = checkpoints.checkpoint_path(run_dir, step)
    partial = checkpoint_dir.partial_path(final)
    (partial / "policy").mkdir(parents=True)
    (partial / "policy" / "model.safetensors").write_bytes(bytes(range(256)) * step)
    (partial / "extra.json").write_text(json.dumps({"step": step}))
    checkpoint_dir.seal(partial, final, {"step": step, **layout}, sha256=sha256)
    return final


def steps_on_disk(run_dir):
    return [step for step, _ in checkpoints.sealed(run_dir)]


def test_retention_deletes_the_oldest_beyond_keep(tmp_path):
    for step in (10, 20, 30, 40):
        save(tmp_path, step)
        checkpoints.prune(tmp_path, keep=2)
    assert steps_on_disk(tmp_path) == [30, 40]
    assert checkpoints.prune(tmp_path, keep=0) == [] and steps_on_disk(tmp_path) == [30, 40]  # 0 keeps all


def test_retention_never_deletes_the_newest_valid_checkpoint(tmp_path):
    for step in (10, 20, 30):
        save(tmp_path, step)
    newest = checkpoints.checkpoint_path(tmp_path, 30)
    (newest / "policy" / "model.safetensors").write_bytes(b"truncated")  # e.g. a disk that filled up
    (checkpoints.checkpoint_path(tmp_path, 20) / "manifest.json").unlink()  # a save that never sealed
    removed = checkpoints.prune(tmp_path, keep=1)
    # keep=1 keeps the newest (corrupt) one, and step 10, the newest that can still be resumed from
    assert steps_on_disk(tmp_path) == [10, 30]
    assert removed == [checkpoints.checkpoint_path(tmp_path, 20)]
    path, skipped = checkpoints.newest_valid(tmp_path)
    assert path == checkpoints.checkpoint_path(tmp_path, 10) and skipped == [newest]


def test_leftovers_of_interrupted_saves_are_not_checkpoints(tmp_path):
    save(tmp_path, 10)
    checkpoint_dir.partial_path(checkpoints.checkpoint_path(tmp_path, 20)).mkdir(parents=True)
    assert steps_on_disk(tmp_path) == [10]
    assert checkpoints.prune(tmp_path, keep=1) == []


def test_sha256_is_optional_and_sizes_still_catch_truncation(tmp_path):
    hashed, unhashed = save(tmp_path, 1), save(tmp_path, 2, sha256=False)
    manifest = json.loads((unhashed / "manifest.json").read_text())
    assert set(manifest["files"].values()) == {None} and manifest["sizes"]["extra.json"] > 0
    checkpoint_dir.verify(unhashed)
    for path in (hashed, unhashed):
        target = path / "policy" / "model.safetensors"
        data = bytearray(target.read_bytes())
        data[0] ^= 0xFF  # same size, one byte flipped: only a digest sees it
        target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        checkpoint_dir.verify(hashed)
    checkpoint_dir.verify(unhashed)  # the documented cost of turning hashing off
    (unhashed / "policy" / "model.safetensors").write_bytes(b"short")
    with pytest.raises(CheckpointError, match="has 5 bytes"):
        checkpoint_dir.verify(unhashed, hashes=False)


def test_resuming_into_another_layout_is_refused_naming_both(tmp_path):
    path = save(tmp_path, 10)
    checkpoints.check_layout(path, learner_ranks=2, zero_stage=3, dtype="fp32")
    with pytest.raises(CheckpointError) as error:
        checkpoints.check_layout(path, learner_ranks=1, zero_stage=2, dtype="fp32")
    message = str(error.value)
    assert "saved with world_size=2, zero_stage=3, dtype=fp32" in message
    assert "asks for world_size=1, zero_stage=2, dtype=fp32" in message


def test_export_checkpoint_and_eval_cadence():
    exports = [s for s in range(1, 101) if checkpoints.due(s, 25)]
    assert exports == [25, 50, 75, 100]
    assert not any(checkpoints.due(s, 0) for s in range(1, 101))  # 0: only final_policy
    saves = [s for s in range(1, 91) if checkpoints.checkpoint_due(s, 40, last_step=90)]
    assert saves == [40, 80, 90]  # the last step always
    assert [s for s in range(1, 91) if checkpoints.checkpoint_due(s, 0, last_step=90)] == [90]
    cfg = EvalConfig(every_steps=30, holdout_fraction=0.25)
    assert [s for s in range(0, 91) if evaluation.due(s, cfg, last_step=80)] == [0, 30, 60, 80, 90]
    assert not any(evaluation.due(s, EvalConfig(), last_step=80) for s in range(0, 81))


def test_holdout_split_is_disjoint_seeded_and_refuses_to_hold_out_everything():
    prompts = [Prompt(text=f"p{i}") for i in range(20)] * 2  # duplicates must not leak across the split
    cfg = EvalConfig(every_steps=5, holdout_fraction=0.25)
    split = evaluation.split_prompts(prompts, cfg, seed=3)
    assert len(split.heldout) == 5 and not set(split.heldout) & set(split.train)
    assert len(split.train) == 30 and set(split.train) | set(split.heldout) == set(prompts)
    assert evaluation.split_prompts(prompts, cfg, seed=3) == split
    assert evaluation.split_prompts(prompts, cfg, seed=4).heldout != split.heldout
    with pytest.raises(ValueError, match="eval.holdout_fraction"):
        evaluation.split_prompts([Prompt(text="a"), Prompt(text="b")], EvalConfig(holdout_fraction=0.9), seed=0)
    assert evaluation.split_prompts(prompts, EvalConfig(), seed=0).train == tuple(prompts)


def test_heldout_file_is_fitted_to_the_policy_like_the_training_prompts(tiny_dir, tmp_path):
    """eval.prompts rows the policy cannot take (longer than prompts.max_prompt_length) are skipped and counted, as
    training rows are, instead of reaching the actors; a file with nothing usable is refused naming eval.prompts."""
    from cluster.config import preflight
    from cluster.config.job import JobConfig, ModelsConfig
    from cluster.config.prompts import PromptSource

    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("\n".join(json.dumps({"prompt": p}) for p in ["the movie", "the plot " * 40, "the cast"]))
    job = JobConfig(
        models=ModelsConfig(policy=str(tiny_dir / "policy")),
        prompts=PromptSource(max_prompt_length=16),
        eval=EvalConfig(every_steps=5, prompts=PromptSource(path=str(heldout))),
    )
    split = evaluation.split_prompts(
        [Prompt(text="the movie")], job.eval, seed=0, fit=lambda loaded: preflight.fit_prompts(job, loaded)
    )
    assert [p.text for p in split.heldout] == ["the movie", "the cast"] and split.overlap == 1
    assert sum(split.skipped.values()) == 1
    heldout.write_text(json.dumps({"prompt": "the plot " * 40}))
    with pytest.raises(ValueError, match="eval.prompts.path: no usable prompt"):
        evaluation.split_prompts(
            [Prompt(text="the movie")], job.eval, seed=0, fit=lambda loaded: preflight.fit_prompts(job, loaded)
        )


def test_heldout_file_takes_its_own_max_prompt_length(tiny_dir, tmp_path):
    """eval.prompts.max_prompt_length, when set, is the held-out file's limit (as cluster.main passes it) in place
    of prompts.max_prompt_length; unset, the training prompts' limit applies to it too."""
    from cluster.config import preflight
    from cluster.config.job import JobConfig, ModelsConfig
    from cluster.config.prompts import PromptSet, PromptSource

    rows = ["the movie", "the plot was fine " * 3, "the cast"]
    loaded = PromptSet(tuple(Prompt(text=p.strip()) for p in rows))
    models = ModelsConfig(policy=str(tiny_dir / "policy"))

    def kept(train_limit, eval_limit):
        heldout = PromptSource(path="heldout.jsonl", max_prompt_length=eval_limit)
        job = JobConfig(
            models=models, prompts=PromptSource(max_prompt_length=train_limit), eval=EvalConfig(prompts=heldout)
        )
        return [p.text for p in preflight.fit_prompts(job, loaded, job.eval.prompts).prompts]

    assert kept(None, None) == kept(32, None) == kept(None, 32) == [p.strip() for p in rows]
    assert kept(6, None) == kept(None, 6) == kept(32, 6) == ["the movie", "the cast"]
    assert kept(6, 32) == [p.strip() for p in rows]
