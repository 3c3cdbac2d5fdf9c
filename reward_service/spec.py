"""RewardSpec: which reward model to serve and how (frozen, validated), and build_reward_model(spec).

The model-side fields (kind, path_or_name, max_length_tokens, forward_batch_size, premise_pattern)
make the RewardModel; the rest are per-deployment knobs read by serve_app.py. Resources are per replica.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from dataclasses import dataclass

from bond.config import check_bounds, check_types, require
from reward_service.reward_model import RewardModel

TOKEN_ENV = "JBOND_REWARD_HTTP_TOKEN"


class RewardKind(enum.StrEnum):
    LEARNED = "learned"  # a sequence classifier's scalar logit on prompt + completion
    ENTAILMENT = "entailment"  # log P(entailment | premise from the prompt, hypothesis = completion)
    FUNCTION = "function"  # an importable Python function (prompt, completion) -> float


@dataclass(frozen=True)
class RewardSpec:
    kind: RewardKind
    """Which kind of reward model (a RewardKind or its string value)."""
    path_or_name: str
    """learned/entailment: a local checkpoint directory or hub id; function: "package.module:function"."""
    replicas: int = 1
    """Replicas to run (the initial count when autoscaling)."""
    min_replicas: int | None = None
    """Autoscaling lower bound; set both bounds to autoscale, leave both unset for a fixed `replicas`."""
    max_replicas: int | None = None
    """Autoscaling upper bound."""
    target_ongoing_requests: float = 2.0
    """Autoscaling target: requests in flight per replica before Serve adds one."""
    cpus_per_replica: float = 1.0
    """CPU cores reserved per replica (Ray also sizes the replica's torch thread pool from it)."""
    gpus_per_replica: float = 0.0
    """GPUs per replica; > 0 runs the model on CUDA."""
    max_batch_size: int = 32
    """Dynamic batching: at most this many requests are scored in one model call."""
    batch_wait_timeout_s: float = 0.01
    """Dynamic batching: how long a partial batch waits for more requests."""
    forward_batch_size: int = 64
    """Samples per model forward pass inside one batch (bounds activation memory)."""
    max_length_tokens: int | None = None
    """Truncate model inputs to this many tokens (default: the tokenizer's / model's own limit)."""
    premise_pattern: str | None = None
    """entailment only: regex picking the source document out of the prompt (default: the whole prompt)."""
    request_timeout_s: float = 30.0
    """A request not scored within this many seconds fails with a timeout error."""
    http_host: str = "127.0.0.1"
    """Address the Serve HTTP proxy binds. Loopback by default; any other address needs a bearer token."""
    http_port: int = 8000
    """Port of the Serve HTTP proxy (one per Ray cluster: the first deploy() starts it)."""
    route_prefix: str = "/reward"
    """HTTP path of this application's JSON endpoint."""
    http_token: str = ""
    """Bearer token HTTP callers must send (`Authorization: Bearer <token>`); '' reads $JBOND_REWARD_HTTP_TOKEN
    (preferred: a token in the config is copied into run_dir/config.yaml). Required off loopback."""
    max_request_bytes: int = 16 * 2**20
    """Largest HTTP body accepted; a larger one is refused with 413 before it is read in full."""

    def __post_init__(self) -> None:
        # In this order, so that a config with several errors is told the same first one as before.
        self._check_model()
        self._check_scaling()
        self._check_serving()
        self._check_http()

    def _check_model(self) -> None:
        if isinstance(self.kind, str) and self.kind in {k.value for k in RewardKind}:
            object.__setattr__(self, "kind", RewardKind(self.kind))
        check_types(self)  # refuses any other kind, naming the valid ones
        require(bool(self.path_or_name), "path_or_name", "must not be empty")
        if self.kind is RewardKind.FUNCTION:
            module, sep, attr = self.path_or_name.partition(":")
            require(
                bool(sep and module and attr),
                "path_or_name",
                f"a function reward is named 'package.module:function', got {self.path_or_name!r}",
            )

    def _check_scaling(self) -> None:
        require(self.replicas >= 1, "replicas", f"must be >= 1, got {self.replicas}")
        require(
            (self.min_replicas is None) == (self.max_replicas is None),
            "min_replicas",
            "set both min_replicas and max_replicas to autoscale, or neither",
        )
        if self.min_replicas is not None:
            require(self.min_replicas >= 0, "min_replicas", f"must be >= 0, got {self.min_replicas}")
            require(self.max_replicas >= 1, "max_replicas", f"must be >= 1, got {self.max_replicas}")
            require(
                self.min_replicas <= self.replicas <= self.max_replicas,
                "replicas",
                f"the initial {self.replicas} replicas must lie within [min_replicas, max_replicas] = "
                f"[{self.min_replicas}, {self.max_replicas}]",
            )
        check_bounds(self, {"> 0": "target_ongoing_requests"})

    def _check_serving(self) -> None:
        check_bounds(
            self,
            {
                ">= 0": "cpus_per_replica gpus_per_replica batch_wait_timeout_s",
                ">= 1": "max_batch_size forward_batch_size",
            },
        )
        # check_types (in _check_model) already refused a max_length_tokens that is not an int, a premise_pattern
        # that is not a string
        require(
            self.max_length_tokens is None or self.max_length_tokens >= 1,
            "max_length_tokens",
            f"must be a positive integer, got {self.max_length_tokens!r}",
        )
        if self.premise_pattern is not None:
            require(self.kind is RewardKind.ENTAILMENT, "premise_pattern", "only applies to the entailment kind")

    def _check_http(self) -> None:
        require(self.request_timeout_s > 0, "request_timeout_s", f"must be > 0, got {self.request_timeout_s}")
        require(bool(self.http_host), "http_host", "must not be empty")
        require(1 <= self.http_port <= 65535, "http_port", f"must be a TCP port in 1..65535, got {self.http_port}")
        require(self.route_prefix.startswith("/"), "route_prefix", f"must start with '/', got {self.route_prefix!r}")
        require(
            is_loopback(self.http_host) or bool(self.resolved_http_token),
            "http_token",
            f"http_host {self.http_host!r} is reachable from other machines: set a bearer token "
            f"(${TOKEN_ENV}, or reward.http_token) or bind 127.0.0.1",
        )
        require(self.max_request_bytes >= 1024, "max_request_bytes", f"must be >= 1024, got {self.max_request_bytes}")

    @property
    def resolved_http_token(self) -> str:
        return self.http_token or os.environ.get(TOKEN_ENV, "")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None

    @property
    def device(self) -> str:
        """Where the model runs inside a replica: CUDA when the replica is given a GPU."""
        return "cuda" if self.gpus_per_replica > 0 else "cpu"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it can be reached from elsewhere
        return False


def build_reward_model(spec: RewardSpec) -> RewardModel:
    """The in-process RewardModel a spec names (imports torch/transformers only for the model kinds)."""
    classifier = {"device": spec.device, "max_length": spec.max_length_tokens, "batch_size": spec.forward_batch_size}
    if spec.kind is RewardKind.LEARNED:
        from reward_service.learned import LearnedRewardModel

        return LearnedRewardModel(spec.path_or_name, **classifier)
    if spec.kind is RewardKind.ENTAILMENT:
        from reward_service.entailment import EntailmentReward

        return EntailmentReward(spec.path_or_name, premise_pattern=spec.premise_pattern, **classifier)
    from reward_service.function import FunctionReward

    return FunctionReward(spec.path_or_name)
