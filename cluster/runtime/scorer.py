"""The reward service on Ray Serve (the Scorer role): requests sent in concurrent chunks, and the replies of
requests the sampler pool already sent as each actor answered (EarlyScoring) collected instead of asked again."""

from __future__ import annotations

from collections.abc import Sequence

from bond.records import Completion, ScoredCompletion
from cluster.runtime.components import reward_prompts
from reward_service import serve_app

# Time a scoring request may wait for Serve to start a replacement replica, on top of reward.request_timeout_s.
REPLICA_START_ALLOWANCE_S = 120.0


class RayScorer:
    def __init__(self, handle, request_timeout_s: float):
        self._handle = handle  # the Serve deployment's handle (reward_service.serve_app.deploy)
        self._timeout_s = request_timeout_s + REPLICA_START_ALLOWANCE_S
        self._early: list[tuple[list, object]] = []  # replies to the latest samples' early requests

    def request(self, completions: Sequence[Completion], chunk: int = 16) -> list[tuple[list, object]]:
        """Send scoring requests in concurrent chunks (so Serve's batcher and replicas share the load); returns
        (chunk, pending reply) pairs."""
        chunks = [list(completions[i : i + chunk]) for i in range(0, len(completions), chunk)]
        return [(part, self._handle.score.remote(reward_prompts(part), [c.text for c in part])) for part in chunks]

    def expect(self, requests: list[tuple[list, object]]) -> None:
        """Requests already sent for the latest samples: score() collects their replies (in place of older ones)."""
        self._early = requests

    def score(self, completions: Sequence[Completion]) -> list[ScoredCompletion]:
        """Score through the reward service. Samples of the pool's latest finish were already sent as their actor
        answered: their replies are collected; anything else (a redrawn share, evaluation samples, a retry after
        a failed reply) is requested now."""
        early, self._early = self._early, []  # a retry after a failure always asks afresh
        wanted = {id(c) for c in completions}  # the requests hold their completions, so ids stay unique
        requests = [(part, reply) for part, reply in early if any(id(c) in wanted for c in part)]
        sent = {id(c) for part, _ in requests for c in part}
        requests += self.request([c for c in completions if id(c) not in sent])
        scored: dict[int, ScoredCompletion] = {}
        for part, reply in requests:
            # bounded: a request waiting for Serve to replace a dead replica must not wait forever
            result = reply.result(timeout_s=self._timeout_s)
            scored.update(
                (id(c), ScoredCompletion(c, reward=r, reward_model_id=result.reward_model_id))
                for c, r in zip(part, result.rewards, strict=True)
            )
        return [scored[id(c)] for c in completions]

    @staticmethod
    def close() -> None:
        serve_app.shutdown()
