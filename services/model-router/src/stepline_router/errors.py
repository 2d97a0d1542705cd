"""The typed error taxonomy: every failed attempt has an outcome, and each outcome a disposition."""

from __future__ import annotations

from enum import StrEnum

from stepline_router.types import Usage
from stepline_vocab import ProviderError as SteplineProviderError

__all__ = [
    "Disposition",
    "Outcome",
    "ProviderError",
    "classify_status",
    "counts_against_health",
    "disposition",
]


class Outcome(StrEnum):
    """How one attempt ended; mirrors `stepline.v1.ModelAttemptOutcome`."""

    SUCCEEDED = "SUCCEEDED"
    RATE_LIMITED = "RATE_LIMITED"
    OVERLOADED = "OVERLOADED"
    TIMED_OUT = "TIMED_OUT"
    CONNECTION_FAILED = "CONNECTION_FAILED"
    AUTH_FAILED = "AUTH_FAILED"
    BAD_REQUEST = "BAD_REQUEST"
    CONTEXT_TOO_LONG = "CONTEXT_TOO_LONG"
    CONTENT_REFUSED = "CONTENT_REFUSED"
    MALFORMED_RESPONSE = "MALFORMED_RESPONSE"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    INCOMPLETE = "INCOMPLETE"
    SERVER_ERROR = "SERVER_ERROR"
    CANCELLED = "CANCELLED"
    # Not sent: the deployment cannot serve the request (tools, JSON output, context window).
    SKIPPED = "SKIPPED"


class Disposition(StrEnum):
    """What the router does after an attempt failed."""

    # Try the same deployment again after a backoff (then fail over when retries run out).
    RETRY = "retry"
    # Move to the next deployment right away.
    FAIL_OVER = "fail_over"
    # Stop: no deployment will do better with the same request.
    FAIL_NOW = "fail_now"


_DISPOSITIONS: dict[Outcome, Disposition] = {
    Outcome.RATE_LIMITED: Disposition.RETRY,
    Outcome.OVERLOADED: Disposition.RETRY,
    Outcome.SERVER_ERROR: Disposition.RETRY,
    Outcome.MALFORMED_RESPONSE: Disposition.RETRY,
    # A timeout or a refused connection already cost time or signals a dead host: move on.
    Outcome.TIMED_OUT: Disposition.FAIL_OVER,
    Outcome.CONNECTION_FAILED: Disposition.FAIL_OVER,
    Outcome.AUTH_FAILED: Disposition.FAIL_OVER,
    Outcome.CONTEXT_TOO_LONG: Disposition.FAIL_OVER,
    Outcome.CIRCUIT_OPEN: Disposition.FAIL_OVER,
    Outcome.SKIPPED: Disposition.FAIL_OVER,
    Outcome.BAD_REQUEST: Disposition.FAIL_NOW,
    Outcome.CONTENT_REFUSED: Disposition.FAIL_NOW,
    Outcome.INCOMPLETE: Disposition.FAIL_NOW,
    Outcome.CANCELLED: Disposition.FAIL_NOW,
    Outcome.SUCCEEDED: Disposition.FAIL_NOW,
}

# Outcomes that say the deployment is unhealthy (as opposed to the request being at fault or
# the tenant being throttled); only these move a circuit breaker towards open.
_UNHEALTHY = frozenset(
    {
        Outcome.OVERLOADED,
        Outcome.SERVER_ERROR,
        Outcome.TIMED_OUT,
        Outcome.CONNECTION_FAILED,
        Outcome.MALFORMED_RESPONSE,
        Outcome.AUTH_FAILED,
    }
)


def disposition(outcome: Outcome) -> Disposition:
    """Retry, fail over or fail now after an attempt ended with `outcome`."""
    return _DISPOSITIONS[outcome]


def counts_against_health(outcome: Outcome) -> bool:
    """Whether `outcome` is a failure of the deployment itself (for the circuit breaker)."""
    return outcome in _UNHEALTHY


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "prompt is too long",
    "maximum context",
    "too many tokens",
)
_REFUSAL_MARKERS = ("content_filter", "content_policy", "content policy", "safety")


def classify_status(status: int, error_type: str = "", message: str = "") -> Outcome:
    """Outcome of an HTTP error response from its status and the provider's error type/text."""
    text = f"{error_type} {message}".lower()
    if error_type in ("overloaded_error", "overloaded"):
        return Outcome.OVERLOADED
    # Anthropic's error type; OpenAI's code (in 200 streams the status cannot say it).
    if status == 429 or error_type in ("rate_limit_error", "rate_limit_exceeded"):
        return Outcome.RATE_LIMITED
    if status in (503, 529):
        return Outcome.OVERLOADED
    if status in (401, 403):
        return Outcome.AUTH_FAILED
    if status == 408:
        return Outcome.TIMED_OUT
    if status >= 500 or status == 409:
        return Outcome.SERVER_ERROR
    if status == 413 or any(marker in text for marker in _CONTEXT_MARKERS):
        return Outcome.CONTEXT_TOO_LONG
    if any(marker in text for marker in _REFUSAL_MARKERS):
        return Outcome.CONTENT_REFUSED
    return Outcome.BAD_REQUEST


class ProviderError(SteplineProviderError):
    """A failed attempt, classified; the message never contains credentials."""

    def __init__(
        self,
        outcome: Outcome,
        message: str,
        *,
        status_code: int = 0,
        retry_after_s: float | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.usage = usage or Usage()
