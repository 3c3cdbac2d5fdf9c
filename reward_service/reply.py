"""RewardReply: what the reward service returns for one request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RewardReply:
    rewards: tuple[float, ...]  # [N] r(prompts[i], completions[i]), finite, in request order
    reward_model_id: str  # provenance: which reward model (and weights) scored them
    replica: str  # the Serve replica that scored them ("in-process" outside Serve)
    batch_requests: int  # requests merged into the model call that scored this one (dynamic batching)
    batch_samples: int  # samples in that model call, all requests together
