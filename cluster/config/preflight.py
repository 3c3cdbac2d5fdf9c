"""Start-up checks that run before Ray starts: every path, port and address the job will need, each failing
as `config error: <section>.<field>: ...` instead of a traceback minutes later inside an actor.

A model named by a path that does not exist and is not a well-formed hub id is refused. A well-formed hub
id can only be checked for its shape here (the machine may have no network; existence is checked when the
model is downloaded), except under HF_HUB_OFFLINE=1, where it must already be in the local hub cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bond.config import Algorithm, ConfigError
from cluster.config.job import JobConfig, SamplerBackend
from cluster.config.prompts import PromptSet, PromptSource, fit_to_policy
from learner.config import Dtype
from reward_service.spec import RewardKind, RewardSpec

CONNECT_TIMEOUT_S = 5.0


def check(job: JobConfig, *, ray_running: bool = False) -> None:
    """Raise ConfigError naming the first field that cannot work. ray_running: the caller already holds a Ray
    session (its Serve proxy may own reward.http_port), so the port is not checked."""
    check_model("models.policy", job.models.policy, need_pad=False)
    check_reward(job.reward)
    if job.eval.gold_reward is not None:
        check_reward(job.eval.gold_reward, "eval.gold_reward")
    if job.algorithm.algorithm is Algorithm.GKD:
        check_teacher(job.algorithm.gkd_teacher, job.models.policy)
    check_policy(job)
    check_context(job.engine.max_model_len, Path(job.models.policy).expanduser() / "config.json")
    address = job.run.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        check_ray_address("run.ray_address" if job.run.ray_address else "RAY_ADDRESS", address)
    elif not ray_running:
        check_port_free("reward.http_port", job.reward.http_host, job.reward.http_port)


def _as_config_error(field: str, check: Callable, *args) -> None:
    """Run a check of the part that uses the value (learner/, reward_service/, actors/), its ValueError named as
    the field's config error: one rule and one message, at start-up and where the part starts."""
    try:
        check(*args)
    except ConfigError:
        raise
    except (ValueError, re.error) as e:
        raise ConfigError(f"{field}: {e}") from None


def check_reward(spec: RewardSpec, section: str = "reward") -> None:
    """The module and callable of a function reward; the directory, tokenizer and labels of a local model."""
    if spec.kind is RewardKind.FUNCTION:
        module = spec.path_or_name.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError) as e:  # a parent package that is missing or broken
            raise ConfigError(f"{section}.path_or_name: cannot import {module!r}: {e}") from None
        if not found:
            raise ConfigError(f"{section}.path_or_name: no module {module!r} on the Python path")
        from reward_service.function import load_function

        _as_config_error(f"{section}.path_or_name", load_function, spec.path_or_name)
        return
    check_model(f"{section}.path_or_name", spec.path_or_name, need_pad=True)
    if spec.premise_pattern is not None:
        _as_config_error(f"{section}.premise_pattern", re.compile, spec.premise_pattern)
    if Path(spec.path_or_name).expanduser().is_dir():
        from transformers import AutoConfig

        from reward_service.entailment import entailment_index
        from reward_service.learned import check_one_logit

        config = AutoConfig.from_pretrained(Path(spec.path_or_name).expanduser())
        if spec.kind is RewardKind.LEARNED:
            _as_config_error(f"{section}.path_or_name", check_one_logit, spec.path_or_name, config)
        else:
            _as_config_error(f"{section}.path_or_name", entailment_index, config.id2label)


# The keys vLLM derives a model's context from (the smallest present wins), as its engine does at start-up.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


def check_context(max_model_len: int | None, config_file: Path) -> None:
    """engine.max_model_len within a local policy's context: vLLM refuses a longer one once the engines start (the
    hf backend would index past learned positions). A RoPE-scaled context, model_max_length and vLLM's
    VLLM_ALLOW_LONG_MAX_MODEL_LEN override are the engine's to judge."""
    if max_model_len is None or not config_file.is_file() or os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
        return
    config = json.loads(config_file.read_text())
    lengths = [config[k] for k in _CONTEXT_KEYS if isinstance(config.get(k), int)]
    if config.get("rope_scaling") or "model_max_length" in config or not lengths:
        return
    if max_model_len > min(lengths):
        raise ConfigError(
            f"engine.max_model_len: {max_model_len} is longer than the policy's context ({min(lengths)} positions "
            f"in {config_file})"
        )


def check_policy(job: JobConfig) -> None:
    """The actors' and the learner's own checks of a local policy, the learner's on a weightless (meta-device) copy:
    safetensors weights for vLLM, parameter names against the checkpoint, gradient checkpointing, LoRA's target
    modules, bucket_bytes against the largest pushed parameter, a local GKD teacher's vocabulary against the
    policy's."""
    path, cfg = Path(job.models.policy).expanduser(), job.learner
    if not path.is_dir():
        return  # a hub id: the actors and the learner check it once downloaded
    from actors.checkpoint_files import checkpoint_specs
    from learner import build, lora
    from learner.teacher import check_vocab
    from learner.weight_export import check_bucket

    if job.models.sampler_backend is SamplerBackend.VLLM:
        _as_config_error("models.policy", checkpoint_specs, path, None)
    module = _weightless("models.policy", path)
    vocab = module.get_output_embeddings().weight.shape[0]
    if cfg.gradient_checkpointing:
        build.checkpointable_layers(module)
    if cfg.lora is None:
        named = list(module.named_parameters())
        build.check_names([n for n, _ in named], path)
    else:
        layout = lora.LoraLayout.of(lora.wrap(module, cfg.lora, job.models.policy), cfg.lora)
        named = list(zip(layout.adapter_names, layout.adapter_params, strict=True))
    check_bucket(
        cfg.bucket_bytes, [n for n, _ in named], [p.numel() for _, p in named], 2 if cfg.dtype is Dtype.BF16 else 4
    )
    teacher = Path(job.algorithm.gkd_teacher).expanduser()
    if job.algorithm.algorithm is Algorithm.GKD and teacher.is_dir():
        teacher_vocab = _weightless("algorithm.gkd_teacher", teacher).get_output_embeddings().weight.shape[0]
        check_vocab(teacher, teacher_vocab, vocab)


def _weightless(field: str, path: Path):
    """The causal LM its config.json describes, on the meta device: shapes and names, no memory, no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    except (ValueError, KeyError) as e:  # an unknown model_type or architecture
        raise ConfigError(f"{field}: cannot build a causal LM from {path / 'config.json'}: {e}") from None


def check_teacher(teacher: str, policy: str) -> None:
    """GKD compares the teacher's and the policy's next-token distributions index by index: a local teacher must
    be a model directory whose tokenizer has exactly the policy's vocabulary (checked when both are local)."""
    check_model("algorithm.gkd_teacher", teacher, need_pad=False)
    if not (Path(teacher).expanduser().is_dir() and Path(policy).expanduser().is_dir()):
        return  # a hub id: the learner compares the vocabulary sizes when it loads the teacher
    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(teacher).get_vocab() != AutoTokenizer.from_pretrained(policy).get_vocab():
        raise ConfigError(
            f"algorithm.gkd_teacher: the tokenizer of {teacher!r} differs from the policy's "
            f"({policy!r}); GKD needs the teacher to share the policy's vocabulary"
        )


def _is_hub_id(name: str) -> bool:
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def check_model(field: str, name: str, *, need_pad: bool) -> None:
    """A local model directory must hold a readable config.json and a tokenizer that fits the model."""
    path = Path(name).expanduser()
    if not path.exists():
        if not _is_hub_id(name):
            raise ConfigError(f"{field}: {name!r} does not exist and is not a hub id ('org/name')")
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(name, "config.json"), str):
                raise ConfigError(
                    f"{field}: {name!r} is not a local directory and HF_HUB_OFFLINE=1, but it is "
                    "not in the hub cache either"
                )
        return  # a hub id: its existence is checked when it is downloaded
    if not path.is_dir():
        raise ConfigError(f"{field}: {name!r} is a file; expected a model directory (config.json, weights, tokenizer)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{field}: {name!r} has no config.json: not a Hugging Face model directory")
    try:
        config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{field}: {config_file} is not valid JSON ({e})") from None
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ConfigError(f"{field}: {name!r} holds no weights (*.safetensors)")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a missing or broken tokenizer
        raise ConfigError(
            f"{field}: cannot load the tokenizer of {name!r}: {type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        ) from None
    vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise ConfigError(
            f"{field}: the tokenizer of {name!r} has {len(tokenizer)} tokens but the model's "
            f"embedding only {vocab}: token ids past {vocab - 1} would index out of range "
            "(a tokenizer from another model?)"
        )
    if need_pad and tokenizer.pad_token is None and tokenizer.eos_token is None:
        raise ConfigError(
            f"{field}: the tokenizer of {name!r} has neither a pad nor an eos token, so batches of "
            "different lengths cannot be padded"
        )


def check_port_free(field: str, host: str, port: int, patience_s: float = 5.0) -> None:
    """The port can be bound now, or within patience_s (the proxy of a Ray this process just shut down, e.g.
    before an auto_resume, may take a moment to let go of it)."""
    deadline = time.monotonic() + patience_s
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"{field}: cannot listen on {host}:{port} ({e.strerror}); another program "
                        "(or another job's Serve) holds it: choose a free port"
                    ) from None
        time.sleep(0.25)


def check_ray_address(field: str, address: str) -> None:
    """A reachable GCS (host:port, ray://host:port for Ray Client); 'auto'/'local' are Ray's own words."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{field}: expected host:port or ray://host:port, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ConfigError(
            f"{field}: nothing answers at {host}:{port} within {CONNECT_TIMEOUT_S:.0f} s "
            f"({e.strerror or e}); is the Ray head running?"
        ) from None


def with_premise(pattern: str | None, prompt_set: PromptSet) -> PromptSet:
    """Prompts an entailment reward's premise_pattern does not match are skipped and counted here, by the reward
    service's own extractor: the service would refuse each of them at scoring time, mid-run."""
    if pattern is None:
        return prompt_set
    from reward_service.entailment import PremiseExtractor
    from reward_service.errors import BadRequestError
    from reward_service.reward_model import plain_text

    extract, kept, skipped = PremiseExtractor(pattern), [], Counter(prompt_set.skipped)
    for i, prompt in enumerate(prompt_set.prompts):
        try:
            extract(plain_text(prompt), i)
            kept.append(prompt)
        except BadRequestError:
            skipped["does not match reward.premise_pattern"] += 1
    if not kept:
        raise ConfigError(f"reward.premise_pattern: matches no prompt (skipped: {dict(skipped)})")
    return PromptSet(prompts=tuple(kept), skipped=dict(skipped))


def fit_prompts(job: JobConfig, prompt_set: PromptSet, source: PromptSource | None = None) -> PromptSet:
    """The prompts the policy can take, rendered as the actors will (chat template, BOS once): those that render to
    no tokens, or longer than max_prompt_length (source's, e.g. eval.prompts, else prompts'), or than the context
    minus one token (the sampler refuses a prompt that leaves no room for a completion), are skipped and counted.
    The context comes from engine.max_model_len or a local policy's config.json; a hub id's plain-text prompts
    without either are checked by the engine itself."""
    prompt_set = with_premise(job.reward.premise_pattern, prompt_set)
    own = source.max_prompt_length if source is not None else None
    limits = [job.prompts.max_prompt_length if own is None else own]
    context = job.engine.max_model_len
    path = Path(job.models.policy).expanduser()
    if context is None and (path / "config.json").is_file():
        context = json.loads((path / "config.json").read_text()).get("max_position_embeddings")
    if isinstance(context, int):
        limits.append(context - 1)
    limit = min((n for n in limits if n is not None), default=None)
    if limit is None and not path.is_dir() and not any(p.is_chat for p in prompt_set.prompts):
        return prompt_set  # nothing to check: no tokenizer load
    from transformers import AutoTokenizer

    return fit_to_policy(prompt_set, AutoTokenizer.from_pretrained(job.models.policy), limit)
