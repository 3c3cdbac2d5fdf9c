"""Completion records -> padded model inputs (prompt + completion, right-padded; targets are input_ids shifted by
one, masked to completion tokens), and log pi(y) from logits at completion positions only (docs/learner.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bond.objective import sequence_logprobs
from bond.records import Completion

# (input_ids [S, L], attention_mask [S, L], keep [K] positions) -> logits [S, K, V] at those positions
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def hf_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A Hugging Face causal LM as a Forward (no KV cache): logits at the positions `keep` only."""
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep).logits


@dataclass(frozen=True)
class Packed:
    """S sequences of prompt + completion, right-padded to length L."""

    input_ids: torch.Tensor  # [S, L] int64, pad_id after the end
    attention_mask: torch.Tensor  # [S, L] int64, 1 on real tokens
    targets: torch.Tensor  # [S, L - 1] input_ids[:, 1:]
    target_mask: torch.Tensor  # [S, L - 1] 1 where the target is a completion token

    @property
    def completion_tokens(self) -> int:
        return int(self.target_mask.sum().item())

    @property
    def logit_positions(self) -> torch.Tensor:
        """[K] the positions whose logits predict a completion token in some row (a contiguous range)."""
        used = self.target_mask.any(0).nonzero().flatten()
        if used.numel() == 0:  # only empty completions: one position, masked out, keeps shapes valid
            return torch.zeros(1, dtype=torch.long, device=self.target_mask.device)
        return torch.arange(int(used[0]), int(used[-1]) + 1, device=self.target_mask.device)


def pack(completions: Sequence[Completion], pad_id: int, device: torch.device) -> Packed:
    """Right-pad prompt + completion; the prompt needs >= 1 token (a position must predict the first y_t)."""
    if not completions:
        raise ValueError("pack: no completions")
    for c in completions:
        if not c.prompt_token_ids:
            raise ValueError(
                f"pack: completion for prompt {c.prompt_id} has no prompt tokens; "
                "log pi(y_1 | x) needs at least one (e.g. BOS)"
            )
    length = max(len(c.prompt_token_ids) + len(c.token_ids) for c in completions)
    ids = torch.full((len(completions), length), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    completion = torch.zeros_like(ids)
    for i, c in enumerate(completions):
        p, t = len(c.prompt_token_ids), len(c.token_ids)
        ids[i, : p + t] = torch.tensor(c.prompt_token_ids + c.token_ids, dtype=torch.long)
        attn[i, : p + t] = 1
        completion[i, p : p + t] = 1
    ids, attn, completion = ids.to(device), attn.to(device), completion.to(device)
    return Packed(input_ids=ids, attention_mask=attn, targets=ids[:, 1:], target_mask=completion[:, 1:])


def completion_logprobs(forward: Forward, packed: Packed) -> torch.Tensor:
    """[S] log pi(y | x) summed over completion tokens (grad flows if forward builds a graph)."""
    keep = packed.logit_positions
    logits = forward(packed.input_ids, packed.attention_mask, keep)  # [S, K, V]
    return sequence_logprobs(logits, packed.targets[:, keep], packed.target_mask[:, keep])
