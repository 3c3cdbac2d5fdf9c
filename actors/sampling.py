"""What a sampler promises: its settings record, the Sampler role, the checks on its inputs, and what both samplers
(actors/vllm_sampler.py, actors/hf_sampler.py) do alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from actors.prompt_rendering import RenderedPrompt, as_prompt, render
from bond.config import check_types, require
from bond.records import Completion, Prompt, Role, WeightUpdate

if TYPE_CHECKING:
    from actors.weight_broadcast import GroupAddress
    from actors.weight_staging import WeightStaging

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample completions (one record for every sampler; fields validated at construction). As the job's
    `sampling` section, the job fixes or derives temperature, top_p and seed (JobConfig.NOT_SETTINGS)."""

    max_new_tokens: int = 32
    """Most tokens generated per completion (EOS included)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy. Logprobs are always those of the untempered model."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 samples from the full distribution."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion (excluded from its text)."""
    seed: int | None = None
    """None: the engine's running random stream. An int makes a call reproducible: sample j of the prompt
    with id i uses its own seed derived from (seed, i, j), so the n samples of a prompt still differ, and
    actors sharing one step's prompts (distinct prompt ids) never reuse a seed."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.temperature >= 0.0, "temperature", f"must be >= 0 (0 is greedy), got {self.temperature}")
        require(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(
            isinstance(self.stop, tuple) and all(isinstance(s, str) and s for s in self.stop),
            "stop",
            f"expected a tuple of non-empty strings, got {self.stop!r}",
        )
        require(self.seed is None or self.seed >= 0, "seed", f"expected None or an int >= 0, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sample_seed(self, prompt_id: int, sample_index: int) -> int | None:
        """The seed of sample `sample_index` of the prompt with id `prompt_id` (None when unseeded).

        Keyed by the prompt id, not by the position in a call: two actors that each get a share of one
        step's prompts must not draw correlated samples (the leave-one-out baseline assumes independence)."""
        if self.seed is None:
            return None
        # splitmix-style mixing: distinct, well spread seeds for nearby (seed, i, j)
        x = self.seed * 0x9E3779B97F4A7C15 + prompt_id * 0xBF58476D1CE4E5B9 + sample_index * 0x94D049BB133111EB
        x = (x ^ (x >> 31)) & 0x7FFF_FFFF_FFFF_FFFF
        return x % (2**31 - 1)


@runtime_checkable
class Sampler(Protocol):
    """A sampling worker holding one role's weights. Works in-process; cluster/ wraps it as a Ray actor."""

    def generate(
        self,
        prompts: Sequence[Prompt | str],
        n: int,
        settings: SamplingSettings,
        prompt_ids: Sequence[int] | None = None,
    ) -> list[Completion]:
        """n completions per prompt: for each prompt in order, its n completions consecutively.
        prompt_ids[i] (default i) is copied into each Completion of prompt i. A prompt is a Prompt record
        (text or chat messages, rendered by actors.prompt_rendering) or a plain string."""
        ...

    def load_weights(self, update: WeightUpdate) -> int:
        """Take a (bucket of a) weight push; returns the version now held (it changes on the last bucket)."""
        ...

    def engine_workers(self) -> int:
        """Processes this sampler adds to a collective weight group (vLLM: one per engine worker)."""
        ...

    def join_weight_group(self, address: GroupAddress, rank_offset: int) -> None:
        """Join a role's weight group (actors/weight_broadcast.py) as ranks rank_offset .. + engine_workers() - 1."""
        ...

    def receive_weights(self) -> int:
        """Receive the push the learner broadcasts now, validated and applied whole; returns the version held."""
        ...

    @property
    def weights_version(self) -> int: ...

    @property
    def role(self) -> Role: ...


def check_request(prompts: Sequence[Prompt | str], n: int, prompt_ids: Sequence[int] | None) -> list[int]:
    """Raise ValueError for a request no sampler can serve; return the prompt ids to use."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a sequence of strings or Prompt records, got a single string")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (samples per prompt) must be an integer >= 1, got {n!r}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str | Prompt):
            raise ValueError(f"prompt {i} is a {type(p).__name__}, not a string or a Prompt")
        if isinstance(p, str) and not p.strip():
            raise ValueError(f"prompt {i} is empty")
    if prompt_ids is None:
        return list(range(len(prompts)))
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt_ids for {len(prompts)} prompts")
    return [int(i) for i in prompt_ids]


def check_prompt_lengths(token_ids: Sequence[Sequence[int]], max_model_len: int) -> None:
    """A prompt must leave room for at least one generated token in the model's context."""
    for i, ids in enumerate(token_ids):
        if len(ids) >= max_model_len:
            raise ValueError(
                f"prompt {i} is {len(ids)} tokens long; the model's context is {max_model_len} tokens, "
                f"which leaves no room for a completion"
            )


def check_scoring(prompts: Sequence[Prompt | str], completions_token_ids: Sequence[Sequence[int]]) -> None:
    """Raise ValueError for a scoring request (one completion per prompt) no sampler can serve."""
    check_request(prompts, 1, None)
    if len(completions_token_ids) != len(prompts):
        raise ValueError(f"{len(completions_token_ids)} completions for {len(prompts)} prompts")


class SamplerBase:
    """What every sampler does the same way: check the role and dtype it is built with, report the role and the
    version its WeightStaging holds, render prompts as its tokenizer does, and score a completion as the sum of its
    token log-probs (the subclass's token_logprobs)."""

    tokenizer: Any
    max_model_len: int
    _staging: WeightStaging

    def __init__(self, role: Role, dtype: str) -> None:
        if not isinstance(role, Role):
            raise ValueError(f"role must be a bond.records.Role, got {role!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self._role, self._dtype = role, DTYPES[dtype]

    @property
    def role(self) -> Role:
        return self._role

    @property
    def weights_version(self) -> int:
        return self._staging.version

    def render(self, prompts: Sequence[Prompt | str]) -> list[RenderedPrompt]:
        """Each prompt as the model reads it: chat template applied, BOS exactly once (actors.prompt_rendering)."""
        return [render(self.tokenizer, p) for p in prompts]

    def _checked_request(
        self, prompts: Sequence[Prompt | str], n: int, settings: SamplingSettings, prompt_ids: Sequence[int] | None
    ) -> tuple[list[int], list[Prompt], list[RenderedPrompt]]:
        """A generate() call checked and rendered as every sampler does it: (prompt ids, Prompt records, each prompt
        as the model reads it); raises ValueError for a request no sampler can serve."""
        ids = check_request(prompts, n, prompt_ids)
        if not isinstance(settings, SamplingSettings):
            raise ValueError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
        records = [as_prompt(p) for p in prompts]
        rendered = self.render(records)
        check_prompt_lengths([r.token_ids for r in rendered], self.max_model_len)
        return ids, records, rendered

    def encode(self, prompts: Sequence[Prompt | str]) -> list[list[int]]:
        """Prompt token ids exactly as the model sees them."""
        return [list(r.token_ids) for r in self.render(prompts)]

    def _completions(
        self,
        ids: list[int],
        records: list[Prompt],
        rendered: list[RenderedPrompt],
        n: int,
        samples: Sequence[tuple[Sequence[int], str, Sequence[float], str]],
    ) -> list[Completion]:
        """The Completions of a checked request (checked_request's ids, records, rendered) from its samples, n per
        prompt in prompt order, each (token ids, text, token log-probs, finish reason)."""
        version = self.weights_version
        return [
            Completion(
                prompt_id=ids[k // n],
                prompt=rendered[k // n].text,
                prompt_token_ids=rendered[k // n].token_ids,
                token_ids=tuple(toks),
                text=text,
                logprobs=tuple(lps),
                role=self._role,
                weights_version=version,
                finish_reason=finish,
                source=records[k // n],
            )
            for k, (toks, text, lps, finish) in enumerate(samples)
        ]

    def token_logprobs(
        self, prompts: Sequence[Prompt | str], completions_token_ids: Sequence[Sequence[int]]
    ) -> list[tuple[float, ...]]:
        raise NotImplementedError

    def score_logprobs(
        self, prompts: Sequence[Prompt | str], completions_token_ids: Sequence[Sequence[int]]
    ) -> list[float]:
        """log pi(y | x) (sum over tokens) of given completions under the served weights."""
        return [float(sum(lp)) for lp in self.token_logprobs(prompts, completions_token_ids)]
