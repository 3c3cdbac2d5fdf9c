"""Bad inputs that need no model and no Ray: prompt files, config values, addresses and ports, checkpoints,
reward-service specs and the loop's scoring retries. Each ends in a ConfigError naming the field (exit 2 from
`python -m cluster.main`), a typed error, or a counted skip. docs/failures.md's bad-input table is built from the
`bad_input` markers (python -m tests.bad_input_table)."""

import errno
import json
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.exceptions import ActorDiedError

from bond.config import ConfigError
from cluster.config import loading, preflight
from cluster.config.job import JobConfig
from cluster.config.prompts import PromptFormat, PromptSource, fit_to_policy, load_prompts
from cluster.main import main, parse_config
from cluster.runtime.ports import free_port
from cluster.training import loop
from cluster.training.checkpoints import newest_valid
from cluster.training.failures import CheckpointWriteError, ScoringFailedError
from demo.tiny import build_tokenizer
from learner import checkpoint_dir
from learner.checkpoint_dir import CheckpointError
from reward_service.errors import NonFiniteRewardError, RewardTimeoutError
from reward_service.spec import TOKEN_ENV, RewardSpec


def texts(prompt_set) -> tuple[str, ...]:
    return tuple(p.plain_text for p in prompt_set.prompts)


def jsonl(tmp_path, *lines: bytes):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return PromptSource(path=str(path))


GOOD = b'{"prompt": "the movie"}'
ROOT = Path(__file__).resolve().parents[2]


# --- prompts ------------------------------------------------------------------------------------------------


@pytest.mark.bad_input("prompt line that is not UTF-8", "skipped, counted as `not UTF-8`")
def test_non_utf8_prompt_line_is_skipped(tmp_path):
    got = load_prompts(jsonl(tmp_path, GOOD, b'{"prompt": "caf\xe9"}'))
    assert texts(got) == ("the movie",) and got.skipped == {"not UTF-8": 1}


@pytest.mark.bad_input("prompt line that is not JSON", "skipped, counted as `invalid JSON`")
def test_corrupt_json_prompt_line_is_skipped(tmp_path):
    got = load_prompts(jsonl(tmp_path, GOOD, b'{"prompt": "the fi', b"{not json}"))
    assert texts(got) == ("the movie",) and got.skipped == {"invalid JSON": 2}


@pytest.mark.bad_input("prompt line that is JSON but not an object", "skipped, counted as `not a JSON object`")
def test_prompt_line_not_an_object_is_skipped(tmp_path):
    got = load_prompts(jsonl(tmp_path, GOOD, b'["the movie"]', b'"invalid JSON"'))
    assert texts(got) == ("the movie",) and got.skipped == {"not a JSON object": 2}


@pytest.mark.bad_input(
    "prompt of the wrong type (number, object, a list that is not chat messages)",
    "skipped, counted as `not a string or a message list (<type>)` / `message without ...`",
)
def test_wrong_typed_prompt_is_skipped(tmp_path):
    got = load_prompts(jsonl(tmp_path, GOOD, b'{"prompt": 3}', b'{"prompt": ["a"]}', b'{"prompt": {"a": 1}}'))
    assert texts(got) == ("the movie",)
    assert got.skipped == {
        "not a string or a message list (int)": 1,
        "not a string or a message list (dict)": 1,
        "message without a string role and content": 1,
    }


@pytest.mark.bad_input(
    "empty or whitespace-only prompt, row without the field", "skipped, counted as `empty` / `missing field`"
)
def test_empty_and_missing_prompts_are_skipped(tmp_path):
    got = load_prompts(
        jsonl(tmp_path, GOOD, b'{"prompt": ""}', b'{"prompt": " \\t "}', b'{"text": "x"}', b'{"prompt": null}')
    )
    assert texts(got) == ("the movie",) and got.skipped == {"empty": 2, "missing field 'prompt'": 2}


@pytest.mark.bad_input("duplicate prompt", "skipped, counted as `duplicate` (first kept)")
def test_duplicate_prompts_are_skipped(tmp_path):
    got = load_prompts(jsonl(tmp_path, GOOD, b'{"prompt": "the film"}', GOOD, b'{"prompt": " the movie "}'))
    assert texts(got) == ("the movie", "the film") and got.skipped == {"duplicate": 2}


@pytest.mark.bad_input("prompts file with no usable row (empty file)", "config error: prompts.path")
def test_prompts_file_without_usable_rows_is_a_config_error(tmp_path):
    (tmp_path / "e.jsonl").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^prompts.path: no usable prompt"):
        load_prompts(PromptSource(path=str(tmp_path / "e.jsonl")))
    with pytest.raises(ConfigError, match=r"^prompts.path: no usable prompt .*invalid JSON"):
        load_prompts(jsonl(tmp_path, b"{oops"))


@pytest.mark.bad_input("prompts file that does not exist", "config error: prompts.path")
def test_missing_prompts_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^prompts.path: no such file"):
        load_prompts(PromptSource(path=str(tmp_path / "missing.jsonl")))


@pytest.mark.bad_input("Parquet file without the prompt column", "config error: prompts.field")
def test_parquet_missing_field_is_a_config_error(tmp_path):
    pq.write_table(pa.table({"question": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(ConfigError, match=r"^prompts.field: .* no column 'prompt' \(columns: \['question'\]\)"):
        load_prompts(PromptSource(path=str(tmp_path / "p.parquet"), format=PromptFormat.PARQUET))


@pytest.mark.bad_input("Parquet column with nulls and non-strings", "skipped, counted by reason")
def test_parquet_null_rows_are_skipped(tmp_path):
    pq.write_table(pa.table({"prompt": ["a", None, "", "b"]}), tmp_path / "p.parquet")
    got = load_prompts(PromptSource(path=str(tmp_path / "p.parquet"), format=PromptFormat.PARQUET))
    assert texts(got) == ("a", "b") and got.skipped == {"missing field 'prompt'": 1, "empty": 1}


@pytest.mark.bad_input("prompts.format=parquet on a file that is not Parquet", "config error: prompts.path")
def test_garbage_parquet_is_a_config_error(tmp_path):
    (tmp_path / "p.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ConfigError, match=r"^prompts.path: cannot read .* as Parquet"):
        load_prompts(PromptSource(path=str(tmp_path / "p.parquet"), format=PromptFormat.PARQUET))


@pytest.mark.bad_input("prompt longer than the policy's context", "skipped, counted as `longer than N tokens`")
def test_over_long_prompts_are_skipped(tmp_path):
    loaded = load_prompts(jsonl(tmp_path, GOOD, json.dumps({"prompt": "the movie was " * 5}).encode()))
    got = fit_to_policy(loaded, build_tokenizer(), max_tokens=10)  # the tiny review tokenizer: a word a token
    assert texts(got) == ("the movie",) and got.skipped == {"longer than 10 tokens": 1}


# --- config, ports, addresses (through the entry point: exit 2 with one line) -----------------------------


def start_fails(capsys, *sets: str) -> str:
    """`python -m cluster.main --set ...` exits 2 with one `config error: ...` line and no traceback."""
    import ray

    argv = ["--config", str(ROOT / "configs" / "smoke.yaml")] + [a for s in sets for a in ("--set", s)]
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.startswith("config error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not ray.is_initialized()  # refused before Ray starts
    assert time.monotonic() - t0 < 30
    return err.removeprefix("config error: ")


def chat_policy_dropping_system_turns(tiny_dir, tmp_path) -> Path:
    """The tiny policy with a chat template that renders only the user turns (as some templates do), so a prompt of
    only a system message renders to no text, hence no token ids: vLLM would refuse it mid-run."""
    import shutil

    from transformers import AutoTokenizer

    policy = tmp_path / "policy"
    shutil.copytree(tiny_dir / "policy", policy)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    tokenizer.save_pretrained(policy)
    return policy


SYSTEM_ONLY = json.dumps({"prompt": [{"role": "system", "content": "the movie"}]}).encode()
USER = json.dumps({"prompt": [{"role": "user", "content": "the movie"}]}).encode()


@pytest.mark.bad_input(
    "prompt that renders to zero tokens with the policy's tokenizer (chat template drops its turns)",
    "skipped, counted as `renders to no tokens`; none left: config error: prompts.path",
)
def test_prompts_rendering_to_no_tokens_are_skipped(tiny_dir, tmp_path, capsys):
    policy = chat_policy_dropping_system_turns(tiny_dir, tmp_path)
    job = loading.build(JobConfig, {"models": {"policy": str(policy)}})
    got = preflight.fit_prompts(job, load_prompts(jsonl(tmp_path, USER, SYSTEM_ONLY)))
    assert [p.messages[0].role for p in got.prompts] == ["user"] and got.skipped == {"renders to no tokens": 1}
    only = jsonl(tmp_path, SYSTEM_ONLY).path
    err = start_fails(
        capsys,
        f"models.policy={policy}",
        f"prompts.path={only}",
        f"reward.http_port={free_port()}",
        f"run.run_dir={tmp_path}/run",
    )
    assert err.startswith("prompts.path: no usable prompt (skipped: {'renders to no tokens': 1})"), err


@pytest.mark.bad_input("out-of-range value (`algorithm.beta=1.5`)", "config error: algorithm.beta")
def test_out_of_range_value(capsys):
    assert start_fails(capsys, "algorithm.beta=1.5").startswith("algorithm.beta: must be in [0, 1]")


@pytest.mark.bad_input(
    "learner.micro_batch_prompts that does not divide a rank's share (16 of 8 prompts)",
    "config error: learner.micro_batch_prompts",
)
def test_micro_batch_that_does_not_divide_the_share(capsys):
    err = start_fails(capsys, "learner.micro_batch_prompts=16")
    assert err.startswith("learner.micro_batch_prompts: 16 does not divide each learner rank's share of 8 prompts")
    err = start_fails(capsys, "resources.learner_ranks=2", "learner.micro_batch_prompts=3")
    assert err.startswith("learner.micro_batch_prompts: 3 does not divide each learner rank's share of 4 prompts")


@pytest.mark.bad_input(
    "engine.max_model_len longer than the policy's context (its config.json's positions)",
    "config error: engine.max_model_len",
)
def test_max_model_len_beyond_the_policy_context(capsys, tiny_dir):
    positions = json.loads((tiny_dir / "policy" / "config.json").read_text())["max_position_embeddings"]
    policy = f"models.policy={tiny_dir / 'policy'}"
    err = start_fails(capsys, policy, f"engine.max_model_len={positions + 1}")
    assert err.startswith(f"engine.max_model_len: {positions + 1} is longer than the policy's context ({positions} ")


@pytest.mark.bad_input(
    "pipelined run.pipeline_depth beyond run.max_staleness (every step's samples redrawn)",
    "config error: run.pipeline_depth",
)
def test_pipeline_deeper_than_max_staleness(capsys):
    err = start_fails(capsys, "run.mode=pipelined", "run.pipeline_depth=2", "run.max_staleness=1")
    assert err.startswith("run.pipeline_depth: 2 steps ahead makes every step's samples 2 versions old"), err
    for sets in (["run.max_staleness=2"], ["run.mode=sync", "run.max_staleness=0"]):
        argv = ["--config", str(ROOT / "configs" / "smoke.yaml"), "--set", "run.pipeline_depth=2"]
        assert parse_config(argv + [a for s in sets for a in ("--set", s)]).run.pipeline_depth == 2


@pytest.mark.bad_input("algorithm gkd in pipelined mode (no off-policy correction)", "config error: run.mode")
def test_gkd_needs_sync_mode(capsys):
    err = start_fails(capsys, "algorithm.algorithm=gkd", "algorithm.gkd_teacher=t", "run.mode=pipelined")
    assert err.startswith("run.mode: gkd has no off-policy correction"), err


@pytest.mark.bad_input("misspelt field (`run.stepz`)", "config error: run.stepz: unknown field")
def test_unknown_field(capsys):
    assert start_fails(capsys, "run.stepz=3").startswith("run.stepz: unknown field")


@pytest.mark.bad_input("value of the wrong type (`run.steps=many`)", "config error: run.steps")
def test_wrong_type(capsys):
    assert start_fails(capsys, "run.steps=many").startswith("run.steps: expected an integer")


@pytest.mark.bad_input("models.policy: a path that does not exist (and is no hub id)", "config error: models.policy")
def test_missing_policy_path(capsys, tmp_path):
    err = start_fails(capsys, f"models.policy={tmp_path}/no/such/model", f"run.run_dir={tmp_path}/run")
    assert err.startswith("models.policy: ") and "does not exist and is not a hub id" in err


@pytest.mark.bad_input(
    "reward.path_or_name: a path that does not exist, a function module that does not",
    "config error: reward.path_or_name",
)
def test_missing_reward_path(capsys, tmp_path):
    err = start_fails(
        capsys, "models.policy=org/model", f"reward.path_or_name={tmp_path}/missing/rm", f"run.run_dir={tmp_path}/run"
    )
    assert err.startswith("reward.path_or_name: ") and "does not exist and is not a hub id" in err
    err = start_fails(
        capsys,
        "reward.kind=function",
        "reward.path_or_name=no_such_module_xyz:score",
        "models.policy=org/model",
        f"run.run_dir={tmp_path}/run",
    )
    assert err.startswith("reward.path_or_name: no module 'no_such_module_xyz'")


def test_hub_ids_pass_the_shape_check_and_paths_do_not():
    """Offline, a hub id can only be checked for shape; HF_HUB_OFFLINE=1 also asks the local cache."""
    preflight.check_model("models.policy", "Qwen/Qwen2.5-0.5B", need_pad=False)
    preflight.check_model("models.policy", "gpt2", need_pad=False)
    for bad in ("./missing", "/abs/missing", "a/b/c", "org/bad name"):
        with pytest.raises(ConfigError, match="does not exist and is not a hub id"):
            preflight.check_model("models.policy", bad, need_pad=False)


@pytest.mark.bad_input("reward.http_port already in use", "config error: reward.http_port")
def test_port_in_use(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight.check_port_free, "__defaults__", (0.5,))  # do not wait the full 5 s
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = start_fails(
            capsys,
            "models.policy=org/model",
            "reward.kind=function",
            "reward.path_or_name=tests.component.tiny_reward_functions:misbehaving",
            f"reward.http_port={port}",
            f"run.run_dir={tmp_path}/run",
        )
    assert err.startswith(f"reward.http_port: cannot listen on 127.0.0.1:{port}")


@pytest.mark.bad_input("run.ray_address where no Ray head listens", "config error: run.ray_address (in < 6 s)")
def test_unreachable_ray_address(capsys, tmp_path):
    port = free_port()  # closed again: nothing listens there
    err = start_fails(
        capsys,
        "models.policy=org/model",
        "reward.kind=function",
        "reward.path_or_name=tests.component.tiny_reward_functions:misbehaving",
        f"run.ray_address=127.0.0.1:{port}",
        f"run.run_dir={tmp_path}/run",
    )
    assert err.startswith(f"run.ray_address: nothing answers at 127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="^run.ray_address: expected host:port"):
        preflight.check_ray_address("run.ray_address", "my-head")


@pytest.mark.bad_input("reward HTTP API on a public address without a token", "config error: reward.http_token")
def test_public_reward_api_needs_a_token(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    err = start_fails(capsys, "reward.http_host=0.0.0.0")
    assert err.startswith("reward.http_token: http_host '0.0.0.0' is reachable from other machines")
    RewardSpec("learned", "p", http_host="127.0.0.1")  # loopback needs none
    RewardSpec("learned", "p", http_host="0.0.0.0", http_token="s3cret")
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert RewardSpec("learned", "p", http_host="10.0.0.5").resolved_http_token == "from-env"


# --- checkpoints ------------------------------------------------------------------------------------------


def sealed(tmp_path, name: str, payload: bytes = b"weights") -> Path:
    final = tmp_path / "checkpoints" / name
    partial = checkpoint_dir.partial_path(final)
    partial.mkdir(parents=True)
    (partial / "policy.bin").write_bytes(payload)
    checkpoint_dir.seal(partial, final, {"step": int(name.split("_")[1])})
    return final


@pytest.mark.bad_input(
    "checkpoint whose save never finished (no manifest)",
    "CheckpointError `partial`; --resume takes the newest complete one",
)
def test_partial_checkpoint(tmp_path):
    good = sealed(tmp_path, "step_0000002")
    crashed = tmp_path / "checkpoints" / "step_0000004"
    crashed.mkdir()
    (tmp_path / "checkpoints" / "step_0000006.partial").mkdir()
    with pytest.raises(CheckpointError, match="no manifest.json: the checkpoint is partial"):
        checkpoint_dir.verify(crashed)
    assert newest_valid(tmp_path)[0] == good


@pytest.mark.bad_input("checkpoint with a corrupted file", "CheckpointError `does not match its sha256`")
def test_corrupt_checkpoint(tmp_path):
    ckpt = sealed(tmp_path, "step_0000002")
    (ckpt / "policy.bin").write_bytes(b"weighty")
    with pytest.raises(CheckpointError, match="policy.bin does not match its sha256"):
        checkpoint_dir.verify(ckpt)


@pytest.mark.bad_input("checkpoint whose manifest is not JSON", "CheckpointError `corrupt`")
def test_checkpoint_manifest_garbage(tmp_path):
    ckpt = sealed(tmp_path, "step_0000002")
    (ckpt / "manifest.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match="is not valid JSON .*corrupt"):
        checkpoint_dir.verify(ckpt)


@pytest.mark.bad_input(
    "disk full while sealing a checkpoint",
    "OSError(ENOSPC) as one error line; the previous checkpoint stays valid and newest",
)
def test_full_disk_while_sealing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    previous = sealed(tmp_path, "step_0000002")
    real_write_text = checkpoint_dir.Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == checkpoint_dir.MANIFEST:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(checkpoint_dir.Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        sealed(tmp_path, "step_0000004")
    monkeypatch.undo()
    assert checkpoint_dir.verify(previous)["step"] == 2
    assert newest_valid(tmp_path)[0] == previous
    error = CheckpointWriteError(
        f"checkpoint step_0000004 not written ([Errno 28] No space left on device); "
        f"newest complete checkpoint: {previous}"
    )
    assert "\n" not in str(error)


# --- the reward service as the loop sees it -----------------------------------------------------------------


class Scorer:
    """Stands in for the System's score verb only: raises the given errors in turn, then scores."""

    def __init__(self, *errors: Exception):
        self.errors, self.calls = list(errors), 0

    def score(self, completions):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return ["scored"] * len(completions)


class Errors:
    def __init__(self):
        self.seen = []

    def record_error(self, component, reason):
        self.seen.append((component, reason))


@pytest.mark.bad_input(
    "reward model returns NaN / inf during a job",
    "job ends with one `error: scoring failed` line (exit 3), counted; not retried",
)
def test_non_finite_reward_in_a_job_fails_once_clearly():
    metrics, scorer = Errors(), Scorer(NonFiniteRewardError("reward model 'm' returned a non-finite reward nan"))
    with pytest.raises(ScoringFailedError, match="after 1 attempt: non_finite: reward model 'm'"):
        loop.score_with_retries(scorer, ["c"], metrics)
    assert scorer.calls == 1 and metrics.seen == [("reward_service", "non_finite")]


@pytest.mark.bad_input(
    "reward service times out / its replica dies mid-request",
    "retried with backoff, each failure counted; after 5 failures one error line",
)
def test_transient_scoring_failures_are_retried_and_counted(monkeypatch):
    monkeypatch.setattr(loop, "SCORE_BACKOFF_S", 0.0)
    metrics = Errors()
    scorer = Scorer(ActorDiedError(), RewardTimeoutError("slow"))
    assert loop.score_with_retries(scorer, ["c", "d"], metrics) == ["scored", "scored"]
    assert metrics.seen == [("reward_service", "ActorDiedError"), ("reward_service", "timeout")]
    with pytest.raises(ScoringFailedError, match="after 5 attempts: timeout"):
        loop.score_with_retries(Scorer(*[RewardTimeoutError("slow")] * 5), ["c"], metrics)


def test_config_loading_keeps_new_knobs():
    job = loading.build(JobConfig, {"resources": {"max_actor_restarts": 0}, "run": {"auto_resume": 2}})
    assert job.resources.max_actor_restarts == 0 and job.run.auto_resume == 2
    with pytest.raises(ConfigError, match="^resources.max_actor_restarts"):
        loading.build(JobConfig, {"resources": {"max_actor_restarts": -1}})


def test_auto_resume_is_bounded_and_needs_a_checkpoint(tmp_path):
    from cluster.training.failures import LearnerDiedError, run_with_auto_resume

    job = loading.build(JobConfig, {"run": {"run_dir": str(tmp_path), "auto_resume": 2}})
    attempts, lines = [], []

    def failing(j):
        attempts.append(j.run.resume)
        raise LearnerDiedError(1, "killed", newest_valid(tmp_path)[0])

    with pytest.raises(LearnerDiedError, match="no checkpoint written yet"):  # nothing to resume from: no retry
        run_with_auto_resume(job, failing, log=lines.append)
    assert attempts == [False] and lines == []
    sealed(tmp_path, "step_0000002")
    with pytest.raises(LearnerDiedError, match=r"learner rank 1 died \(killed\); last checkpoint .*step_0000002"):
        run_with_auto_resume(job, failing, log=lines.append)
    assert attempts == [False, False, True, True] and len(lines) == 2 and "auto_resume 2/2" in lines[1]
