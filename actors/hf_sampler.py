"""The reference sampler: plain Hugging Face transformers `generate`, the same Sampler role as VllmSampler.

Slow, but every line is the textbook computation, so tests hold the vLLM engine to it; it is also the
fallback where vLLM does not run. Logprobs are taken from the raw logits (untempered), as vLLM reports them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from actors.sampling import SamplerBase, SamplingSettings, check_scoring
from actors.weight_broadcast import GroupAddress, WeightGroup
from actors.weight_flat import FlatUpdate, as_weight_update
from actors.weight_staging import ParamSpec, WeightStaging
from bond.records import Completion, Prompt, Role, WeightUpdate


class HfSampler(SamplerBase):
    """Sampler role on `AutoModelForCausalLM.from_pretrained(model)`; weights are copied into the module."""

    def __init__(
        self,
        model: str,
        role: Role,
        *,
        tokenizer: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        max_model_len: int | None = None,
        initial_version: int = 0,
    ) -> None:
        super().__init__(role, dtype)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=self._dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.max_model_len = max_model_len or int(self.model.config.max_position_embeddings)
        eos = self.model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self._eos))
        self._params = self.model.state_dict()
        # No fused layers and no host copy needed: HF modules take any subset of parameters as they are.
        self._staging = WeightStaging(
            {k: ParamSpec(tuple(v.shape), v.dtype) for k, v in self._params.items()}, role, initial_version
        )

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Prompt | str],
        n: int,
        settings: SamplingSettings,
        prompt_ids: Sequence[int] | None = None,
    ) -> list[Completion]:
        ids, records, rendered = self._checked_request(prompts, n, settings, prompt_ids)
        token_ids = [list(r.token_ids) for r in rendered]
        # One batch per token budget, so no sequence runs past the context (usually a single batch).
        budgets = [min(settings.max_new_tokens, self.max_model_len - len(t)) for t in token_ids]
        results: dict[int, list[tuple[list[int], str, list[float], str]]] = {}
        with torch.random.fork_rng(devices=[]):
            if settings.seed is not None:
                # One stream per call, keyed by its first prompt id: actors sharing a step's prompts get
                # distinct ids, so their samples are not coupled (the leave-one-out baseline assumes that).
                torch.manual_seed(settings.sample_seed(ids[0], 0) if ids else settings.seed)
            for budget in sorted(set(budgets)):
                group = [i for i, b in enumerate(budgets) if b == budget]
                for i, samples in zip(
                    group, self._generate_group([token_ids[i] for i in group], n, budget, settings), strict=True
                ):
                    results[i] = [self._finish(token_ids[i], toks, lps, settings) for toks, lps in samples]
        return self._completions(ids, records, rendered, n, [s for i in range(len(prompts)) for s in results[i]])

    def _generate_group(
        self, token_ids: list[list[int]], n: int, budget: int, settings: SamplingSettings
    ) -> list[list[tuple[list[int], list[float]]]]:
        width = max(len(t) for t in token_ids)
        device = self.model.device
        input_ids = torch.tensor([[self._pad] * (width - len(t)) + t for t in token_ids], device=device)
        mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in token_ids], device=device)
        sampling = {} if settings.greedy else {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
        out = self.model.generate(
            # each prompt's row repeated n times (HF refuses num_return_sequences > 1 when greedy)
            input_ids=input_ids.repeat_interleave(n, 0),
            attention_mask=mask.repeat_interleave(n, 0),
            max_new_tokens=budget,
            min_new_tokens=0,
            do_sample=not settings.greedy,
            pad_token_id=self._pad,
            return_dict_in_generate=True,
            output_logits=True,
            **sampling,
        )
        new = out.sequences[:, width:]  # [len(token_ids) * n, T], prompt i's samples at rows i*n .. i*n+n-1
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [rows, T, V] raw, untempered
        chosen = logprobs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        rows = []
        for row, toks in enumerate(new.tolist()):
            end = next((t + 1 for t, tok in enumerate(toks) if tok in self._eos), len(toks))
            rows.append((toks[:end], chosen[row, :end].tolist()))
        return [rows[i * n : (i + 1) * n] for i in range(len(token_ids))]

    def _finish(
        self, prompt_tokens: list[int], toks: list[int], lps: list[float], settings: SamplingSettings
    ) -> tuple[list[int], str, list[float], str]:
        """A sample cut at its first stop string, as (token ids, text, token log-probs, finish reason)."""
        finish = "stop" if toks and toks[-1] in self._eos else "length"
        text = self._text(prompt_tokens, toks)
        if settings.stop:
            # Like vLLM: end at the token that completes a stop string; the text excludes the stop string.
            for t in range(1, len(toks) + 1):
                partial = self._text(prompt_tokens, toks[:t])
                hit = min((partial.find(s) for s in settings.stop if s in partial), default=-1)
                if hit >= 0:
                    toks, lps, text, finish = toks[:t], lps[:t], partial[:hit], "stop"
                    break
        return toks, text, lps, finish

    def _text(self, prompt_tokens: list[int], toks: list[int]) -> str:
        # Decoding prompt + completion keeps the completion's leading space, as vLLM's detokeniser does.
        whole = self.tokenizer.decode(prompt_tokens + toks, skip_special_tokens=True)
        return whole[len(self.tokenizer.decode(prompt_tokens, skip_special_tokens=True)) :]

    def load_weights(self, update: WeightUpdate | FlatUpdate) -> int:
        tensors = self._staging.stage(as_weight_update(update))
        if tensors is not None:  # the push's last bucket: all of it is applied now
            self._copy_in(tensors)
            self._staging.applied(tensors, update.version)
        return self.weights_version

    @torch.no_grad()
    def _copy_in(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            self._params[name].copy_(t)

    def engine_workers(self) -> int:
        """Members this sampler adds to a weight group: itself."""
        return 1

    def join_weight_group(self, address: GroupAddress, rank_offset: int) -> None:
        self._group = WeightGroup(address, rank_offset, self.model.device)

    def receive_weights(self) -> int:
        """Take the push the learner broadcasts now (actors/weight_broadcast.py); returns the version held."""
        group = getattr(self, "_group", None)
        if group is None:
            raise RuntimeError("receive_weights before join_weight_group")
        return group.receive_push(self._staging, self._copy_in)

    @torch.no_grad()
    def token_logprobs(
        self, prompts: Sequence[Prompt | str], completions_token_ids: Sequence[Sequence[int]]
    ) -> list[tuple[float, ...]]:
        """log pi(y_t | x, y_<t) of given completions (one unpadded forward each: the exact reference)."""
        check_scoring(prompts, completions_token_ids)
        result = []
        for p, y in zip(self.encode(prompts), completions_token_ids, strict=True):
            seq = torch.tensor([p + [int(t) for t in y]], device=self.model.device)
            logprobs = self.model(input_ids=seq).logits[0, :-1].float().log_softmax(-1)
            chosen = logprobs.gather(-1, seq[0, 1:].unsqueeze(-1)).squeeze(-1)[len(p) - 1 :]
            result.append(tuple(chosen.tolist()))
        return result
