"""The learner's no-grad log-probabilities: of the policy, and of the anchor and the reference swapped into the
policy's storage (shadow_weights.py), or of pi_ref's separate bf16 copy (learner.reference_dtype)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bond.divergence import KlEstimates, kl_estimates
from bond.off_policy import importance_weights
from bond.records import Batch, Completion, Role
from learner import rendezvous
from learner.engine import Engine
from learner.objectives import Scored
from learner.sequences import Packed, completion_logprobs, hf_forward, pack
from learner.shadow_weights import ShadowWeights


@dataclass(frozen=True)
class Scorer:
    engine: Engine
    shadows: dict[Role, ShadowWeights]  # the anchor and the reference
    reference_bf16: torch.nn.Module | None  # learner.reference_dtype bf16: scores pi_ref instead of the swap
    pad_id: int
    device: torch.device
    chunk: int  # sequences per no-grad forward outside a step
    cap: float  # of an importance weight (bond.off_policy)

    def pack(self, completions: Sequence[Completion]) -> Packed:
        return pack(completions, self.pad_id, self.device)

    def logprobs(self, packed: Packed) -> torch.Tensor:
        return completion_logprobs(self.engine.forward, packed)

    def chunks(self, completions: Sequence[Completion]) -> list[Packed]:
        return [self.pack(completions[i : i + self.chunk]) for i in range(0, len(completions), self.chunk)]

    def score(
        self, share: Batch, packs: list[Packed], micro_prompts: int, anchor_version: int | None, prepass: bool
    ) -> Scored:
        """Each model once per step, on the policy samples only; the target group's weight where the target moves
        (anchor_version given: a frozen reference is never stale); the policy's own pass where the objective asks."""
        with torch.no_grad():
            with self.shadows[Role.ANCHOR].swapped_in():
                logp_anchor = torch.cat([self.logprobs(p) for p in packs])
                w_target = None if anchor_version is None else self.target_weights(share, anchor_version)
            logp_ref = self.reference_logprobs(packs)
            logp = torch.cat([self.logprobs(p) for p in packs]) if prepass and len(packs) > 1 else None
        return Scored(share, micro_prompts, packs, logp_anchor, logp_ref, w_target, logp)

    def target_weights(self, share: Batch, version: int) -> torch.Tensor | None:
        """[B] truncated importance weight of each prompt's target group under the current anchor (bond.off_policy);
        None when every target sample was drawn by the current anchor (sync mode: no extra forward). Called with
        the anchor swapped in."""
        stale = torch.tensor(
            [[a.completion.weights_version != version for a in g] for g in share.target], device=self.device
        )
        # a global decision: under ZeRO-3 the forward below is a collective every rank must enter
        if rendezvous.all_reduce_sum(stale.sum().double().unsqueeze(0)).item() == 0:
            return None
        flat = [a.completion for g in share.target for a in g]
        logp_now = torch.cat([self.logprobs(p) for p in self.chunks(flat)])
        sampler = torch.tensor([c.sum_logprob for c in flat], dtype=logp_now.dtype, device=self.device)
        return importance_weights(logp_now.view(stale.shape), sampler.view(stale.shape), stale, self.cap)

    def reference_logprobs(self, packs: Sequence[Packed]) -> torch.Tensor:
        """[S] log pi_ref(y), no grad: from the bf16 copy (learner.reference_dtype) or the policy's swapped storage."""
        if self.reference_bf16 is None:
            with self.shadows[Role.REFERENCE].swapped_in():
                return torch.cat([self.logprobs(p) for p in packs])
        forward = functools.partial(hf_forward, self.reference_bf16)
        with torch.no_grad():
            return torch.cat([completion_logprobs(forward, p) for p in packs]).float()

    def role_logprobs(self, completions: Sequence[Completion], role: Role) -> torch.Tensor:
        """[len] log pi_role(y | x) of each completion, fp32 on CPU."""
        packs = self.chunks(completions)
        swap = contextlib.nullcontext() if role is Role.POLICY else self.shadows[role].swapped_in()
        with torch.no_grad(), swap:
            return torch.cat([self.logprobs(p) for p in packs]).float().cpu()

    def kl_to_reference(self, completions: Sequence[Completion], role: Role = Role.POLICY) -> KlEstimates:
        """KL(pi_role || ref): the role's logits for every chunk first (the anchor's shadow swapped in), then the
        reference swapped in once (a swap copies the whole local model)."""
        packs = self.chunks(completions)
        swap = contextlib.nullcontext() if role is Role.POLICY else self.shadows[role].swapped_in()
        with torch.no_grad():
            with swap:
                policy = [self.engine.forward(p.input_ids, p.attention_mask, p.logit_positions) for p in packs]
            with self.shadows[Role.REFERENCE].swapped_in():
                reference = [self.engine.forward(p.input_ids, p.attention_mask, p.logit_positions) for p in packs]
        parts = [
            kl_estimates(lp, lr, p.targets[:, p.logit_positions], p.target_mask[:, p.logit_positions])
            for p, lp, lr in zip(packs, policy, reference, strict=True)
        ]
        fields = dataclasses.fields(KlEstimates)
        return KlEstimates(*(torch.cat([getattr(e, f.name) for e in parts]).float().cpu() for f in fields))
