"""What can go wrong when scoring, as exception types a caller can catch (and Serve can map to HTTP codes).

Each error carries a short `reason`, used as the tag of the service's error counter, so a dashboard
can tell bad requests from broken reward models from timeouts.
"""

from __future__ import annotations


class RewardServiceError(Exception):
    """Base class: scoring failed; `reason` says why in one word."""

    default_reason = "error"
    http_status = 500  # a failing model or a timeout is the service's (5xx); bad requests the caller's to fix (4xx)

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason

    def __reduce__(self):
        # Ray ships exceptions between processes by pickling: keep `reason` across the trip
        # (the default Exception pickling would call __init__ with the message only).
        return type(self), (self.message, self.reason)


class BadRequestError(RewardServiceError):
    """The request itself is malformed (bad JSON, a missing field, wrong types, lengths that differ)."""

    default_reason = "bad_request"
    http_status = 400


class RewardModelError(RewardServiceError):
    """The reward model failed on a well-formed request (it raised, or returned something unusable)."""

    default_reason = "model_error"


class NonFiniteRewardError(RewardModelError):
    """The reward model returned NaN or +-inf: never passed on, since one NaN poisons a whole learner step."""

    default_reason = "non_finite"


class RewardTimeoutError(RewardServiceError):
    """Scoring took longer than the service's request timeout."""

    default_reason = "timeout"
    http_status = 504


class PayloadTooLargeError(BadRequestError):
    """The HTTP body is larger than the service's max_request_bytes (HTTP 413)."""

    default_reason = "too_large"
    http_status = 413


class UnauthorizedError(BadRequestError):
    """The HTTP request lacks the service's bearer token, or carries a wrong one (HTTP 401)."""

    default_reason = "unauthorized"
    http_status = 401
