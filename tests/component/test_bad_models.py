"""Bad model directories and a full disk, on copies of the tiny models: each refused at start-up with
`config error: <field>: ...` (exit 2, before Ray starts), or, for the disk, a clear OSError that leaves the
previous checkpoint whole."""

import errno
import functools
import json
import os
import pickle
import random
import shutil
import time
from pathlib import Path

import pytest
import torch

from bond.config import BondConfig
from bond.records import Batch, Completion, Role, ScoredCompletion
from cluster.config import preflight
from cluster.config.prompts import PromptSource, load_prompts
from cluster.main import main
from cluster.runtime.ports import free_port
from cluster.training.checkpoints import newest_valid
from learner import checkpoint_dir, safetensors_shards
from learner.config import LearnerConfig
from learner.learner import Learner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Every job here must stop before Ray starts; should a check let one through, fail instead of running it."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("the job got past the start-up checks and started Ray")

    monkeypatch.setattr(ray, "init", refuse)


def start_fails(capsys, tiny_dir: Path, tmp_path: Path, *sets: str) -> str:
    import ray

    argv = [
        "--config",
        str(ROOT / "configs" / "smoke.yaml"),
        "--set",
        f"run.run_dir={tmp_path / 'run'}",
        "--set",
        f"models.policy={tiny_dir / 'policy'}",
        "--set",
        f"reward.path_or_name={tiny_dir / 'reward'}",
    ]
    argv += [a for s in sets for a in ("--set", s)]
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("config error: ") and err.count("\n") == 1, err
    assert not ray.is_initialized() and time.monotonic() - t0 < 30
    return err.removeprefix("config error: ")


def broken_copy(tiny_dir: Path, tmp_path: Path, which: str = "policy") -> Path:
    out = tmp_path / f"broken_{which}"
    shutil.copytree(tiny_dir / which, out)
    return out


@pytest.mark.bad_input("models.policy: a directory without config.json", "config error: models.policy")
def test_policy_dir_without_config(capsys, tiny_dir, tmp_path):
    model = broken_copy(tiny_dir, tmp_path)
    (model / "config.json").unlink()
    assert "has no config.json" in start_fails(capsys, tiny_dir, tmp_path, f"models.policy={model}")


@pytest.mark.bad_input("models.policy: config.json that is not JSON", "config error: models.policy")
def test_policy_config_not_json(capsys, tiny_dir, tmp_path):
    model = broken_copy(tiny_dir, tmp_path)
    (model / "config.json").write_text('{"model_type": "llama",')
    assert "config.json is not valid JSON" in start_fails(capsys, tiny_dir, tmp_path, f"models.policy={model}")


@pytest.mark.bad_input("models.policy: a directory without weights", "config error: models.policy")
def test_policy_without_weights(capsys, tiny_dir, tmp_path):
    model = broken_copy(tiny_dir, tmp_path)
    (model / "model.safetensors").unlink()
    assert "holds no weights" in start_fails(capsys, tiny_dir, tmp_path, f"models.policy={model}")


@pytest.mark.bad_input("models.policy: tokenizer files missing or unloadable", "config error: models.policy")
def test_policy_tokenizer_unloadable(capsys, tiny_dir, tmp_path):
    model = broken_copy(tiny_dir, tmp_path)
    (model / "tokenizer.json").write_text("{not a tokenizer")
    err = start_fails(capsys, tiny_dir, tmp_path, f"models.policy={model}")
    assert err.startswith("models.policy: cannot load the tokenizer of"), err


@pytest.mark.bad_input(
    "tokenizer that does not belong to the model (more tokens than embeddings)",
    "config error: models.policy / reward.path_or_name",
)
def test_tokenizer_model_mismatch(capsys, tiny_dir, tmp_path):
    for which, field in (("policy", "models.policy"), ("reward", "reward.path_or_name")):
        model = broken_copy(tiny_dir, tmp_path, which)
        config = json.loads((model / "config.json").read_text())
        config["vocab_size"] = 40  # the tiny tokenizer has 58 tokens
        (model / "config.json").write_text(json.dumps(config))
        err = start_fails(capsys, tiny_dir, tmp_path, f"{field}={model}")
        assert err.startswith(f"{field}: the tokenizer of") and "has 58 tokens but the model's embedding only 40" in err


@pytest.mark.bad_input("reward tokenizer with neither pad nor eos token", "config error: reward.path_or_name")
def test_reward_tokenizer_without_pad(capsys, tiny_dir, tmp_path):
    model = broken_copy(tiny_dir, tmp_path, "reward")
    config = json.loads((model / "tokenizer_config.json").read_text())
    for key in ("pad_token", "eos_token"):
        config.pop(key)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["padding"] = None  # transformers also takes the pad token from the tokenizer's own padding config
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    err = start_fails(capsys, tiny_dir, tmp_path, f"reward.path_or_name={model}")
    assert err.startswith("reward.path_or_name: the tokenizer of") and "neither a pad nor an eos token" in err


def test_policy_tokenizer_without_pad_is_fine(tiny_dir, tmp_path):
    """The policy side pads with eos (sampler) or masks (learner): no pad token is not an error there."""
    model = broken_copy(tiny_dir, tmp_path)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("pad_token")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    preflight.check_model("models.policy", str(model), need_pad=False)


@pytest.mark.bad_input(
    "prompt longer than the policy's context (real tokenizer)", "skipped, counted as `longer than 63 tokens`"
)
def test_prompts_longer_than_the_context_are_skipped(tiny_dir, tmp_path):
    from cluster.config.job import JobConfig

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "the movie"}) + "\n" + json.dumps({"prompt": "the movie " * 40}) + "\n")
    job = JobConfig(models=JobConfig().models.__class__(policy=str(tiny_dir / "policy")))
    got = preflight.fit_prompts(job, load_prompts(PromptSource(path=str(path))))
    assert [p.plain_text for p in got.prompts] == ["the movie"] and got.skipped == {"longer than 63 tokens": 1}


_port = functools.cache(free_port)  # one port per test process: the learner's process group is created once and reused


def _batch(seed: int) -> Batch:
    rng = random.Random(seed)

    def completion(i: int, role: Role) -> Completion:
        tokens = tuple(rng.randrange(5, 58) for _ in range(4))
        return Completion(
            prompt_id=i,
            prompt="x",
            prompt_token_ids=(1, rng.randrange(5, 58)),
            token_ids=tokens,
            text="y",
            logprobs=(-1.0,) * 4,
            role=role,
            weights_version=0,
        )

    return Batch(
        policy=tuple((ScoredCompletion(completion(i, Role.POLICY), rng.random(), "rm"),) for i in range(4)),
        target=tuple(
            tuple(ScoredCompletion(completion(i, Role.ANCHOR), rng.random(), "rm") for _ in range(2)) for i in range(4)
        ),
    )


@pytest.mark.bad_input(
    "disk full in the middle of a learner checkpoint",
    "OSError(ENOSPC); the previous checkpoint stays valid and is what --resume takes",
)
def test_full_disk_mid_checkpoint_keeps_the_previous_one(tiny_dir, tmp_path, monkeypatch):
    learner = Learner(
        tiny_dir / "policy",
        BondConfig(prompts_per_step=4),
        LearnerConfig(zero_stage=0, micro_batch_prompts=4),
        master_port=_port(),
    )
    learner.step(_batch(0))
    first = tmp_path / "checkpoints" / "step_0000001"
    learner.save(first, extra={"step": 1})
    learner.step(_batch(1))
    real_save_file, calls = safetensors_shards.save_file, []

    def full_disk(*args, **kwargs):  # the policy shard is written, the anchor's hits a full disk
        calls.append(args[1])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_file(*args, **kwargs)

    monkeypatch.setattr(safetensors_shards, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        learner.save(tmp_path / "checkpoints" / "step_0000002", extra={"step": 2})
    monkeypatch.undo()
    assert len(calls) == 2 and checkpoint_dir.partial_path(tmp_path / "checkpoints" / "step_0000002").exists()
    assert checkpoint_dir.verify(first)["step"] == 1
    assert newest_valid(tmp_path)[0] == first
    assert learner.restore(newest_valid(tmp_path)[0]) == {"step": 1}


class _Payload:
    """What a tampered checkpoint could carry: unpickling it runs a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.bad_input(
    "checkpoint file carrying a pickled code payload (--resume)",
    "refused with `UnpicklingError`, nothing executed (weights-only loading, DeepSpeed's files too)",
)
def test_checkpoint_with_a_pickle_payload_is_refused(tiny_dir, tmp_path):
    learner = Learner(
        tiny_dir / "policy",
        BondConfig(prompts_per_step=4),
        LearnerConfig(zero_stage=2, micro_batch_prompts=4),
        master_port=_port(),
    )
    learner.step(_batch(0))
    ckpt = tmp_path / "step_0000001"
    learner.save(ckpt, extra={"step": 1})
    assert learner.restore(ckpt) == {"step": 1}  # DeepSpeed's own files load with the weights-only unpickler
    marker = tmp_path / "payload-ran"
    optim = next(ckpt.rglob("*optim_states.pt"))
    torch.save({"optimizer_state_dict": _Payload(marker)}, optim)
    manifest = json.loads((ckpt / "manifest.json").read_text())  # whoever tampers can re-seal the manifest too
    manifest["files"][optim.relative_to(ckpt).as_posix()] = checkpoint_dir._sha256(optim)
    manifest["sizes"][optim.relative_to(ckpt).as_posix()] = optim.stat().st_size
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        learner.restore(ckpt)
    assert not marker.exists()
