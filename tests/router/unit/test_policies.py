"""Error taxonomy, Retry-After parsing, backoff with full jitter, the circuit breaker."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stepline_router.backoff import full_jitter
from stepline_router.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from stepline_router.errors import (
    Disposition,
    Outcome,
    classify_status,
    counts_against_health,
    disposition,
)
from stepline_router.retryafter import parse_duration, retry_after_seconds

NOW = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "kind", "message", "outcome"),
    [
        (429, "rate_limit_error", "slow down", Outcome.RATE_LIMITED),
        (529, "overloaded_error", "Overloaded", Outcome.OVERLOADED),
        (503, "", "", Outcome.OVERLOADED),
        (500, "api_error", "boom", Outcome.SERVER_ERROR),
        (502, "", "bad gateway", Outcome.SERVER_ERROR),
        (401, "authentication_error", "bad key", Outcome.AUTH_FAILED),
        (403, "permission_error", "", Outcome.AUTH_FAILED),
        (408, "", "", Outcome.TIMED_OUT),
        (400, "invalid_request_error", "context_length_exceeded", Outcome.CONTEXT_TOO_LONG),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens",
            Outcome.CONTEXT_TOO_LONG,
        ),
        (413, "request_too_large", "", Outcome.CONTEXT_TOO_LONG),
        (400, "invalid_request_error", "content_policy_violation", Outcome.CONTENT_REFUSED),
        (400, "invalid_request_error", "messages: field required", Outcome.BAD_REQUEST),
        (404, "not_found_error", "model not found", Outcome.BAD_REQUEST),
        (200, "overloaded_error", "in-stream", Outcome.OVERLOADED),
    ],
)
def test_http_errors_are_classified(status: int, kind: str, message: str, outcome: Outcome) -> None:
    assert classify_status(status, kind, message) is outcome


def test_each_outcome_has_a_disposition() -> None:
    assert disposition(Outcome.RATE_LIMITED) is Disposition.RETRY
    assert disposition(Outcome.OVERLOADED) is Disposition.RETRY
    assert disposition(Outcome.SERVER_ERROR) is Disposition.RETRY
    assert disposition(Outcome.CONNECTION_FAILED) is Disposition.FAIL_OVER
    assert disposition(Outcome.TIMED_OUT) is Disposition.FAIL_OVER
    assert disposition(Outcome.AUTH_FAILED) is Disposition.FAIL_OVER
    assert disposition(Outcome.CONTEXT_TOO_LONG) is Disposition.FAIL_OVER
    assert disposition(Outcome.BAD_REQUEST) is Disposition.FAIL_NOW
    assert disposition(Outcome.CONTENT_REFUSED) is Disposition.FAIL_NOW
    assert all(disposition(o) in Disposition for o in Outcome)
    # The tenant being throttled or sending a bad request says nothing about the deployment.
    assert not counts_against_health(Outcome.RATE_LIMITED)
    assert not counts_against_health(Outcome.BAD_REQUEST)
    assert counts_against_health(Outcome.CONNECTION_FAILED)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"Retry-After": "Sun, 01 Nov 2026 12:00:30 GMT"}, 30.0),
        ({"Retry-After": "Sun, 01 Nov 2026 11:59:00 GMT"}, 0.0),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "20ms"}, 360.0),
        ({"x-ratelimit-reset-tokens": "1h2m3.5s"}, 3723.5),
        ({"x-ratelimit-reset": str(int(NOW.timestamp()) + 12)}, 12.0),
        ({"anthropic-ratelimit-requests-reset": "2026-11-01T12:00:05Z"}, 5.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parser(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers, NOW) == seconds


def test_durations() -> None:
    assert parse_duration("1m30s") == 90
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("abc") is None
    assert parse_duration("5x") is None


def test_full_jitter_spans_zero_to_the_capped_exponential() -> None:
    assert full_jitter(0, base_s=0.5, cap_s=10, random=lambda: 0.999) == pytest.approx(0.4995)
    assert full_jitter(3, base_s=0.5, cap_s=10, random=lambda: 1.0) == 4.0
    assert full_jitter(10, base_s=0.5, cap_s=10, random=lambda: 1.0) == 10.0
    assert full_jitter(5, base_s=0.5, cap_s=10, random=lambda: 0.0) == 0.0
    assert full_jitter(2, base_s=1, cap_s=10, random=lambda: 0.25) == 1.0


def test_breaker_opens_after_failures_in_the_window_only() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=3, window_s=10, cooldown_s=5))
    breaker.on_failure(0)
    breaker.on_failure(1)
    breaker.on_failure(12)  # the first two fell out of the window
    assert breaker.state(12) is BreakerState.CLOSED
    breaker.on_failure(13)
    breaker.on_failure(14)
    assert breaker.state(14) is BreakerState.OPEN
    assert not breaker.allow(18.9)


def test_breaker_half_open_allows_one_probe_then_closes_or_reopens() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, window_s=10, cooldown_s=5))
    breaker.on_failure(0)
    assert not breaker.allow(4.9)
    assert breaker.state(5) is BreakerState.HALF_OPEN
    assert breaker.allow(5)
    assert not breaker.allow(5.1)  # only one probe in flight
    breaker.on_failure(6)  # failed probe: open again, new cooldown
    assert not breaker.allow(10)
    assert breaker.allow(11)
    breaker.on_success(11.5)
    assert breaker.state(11.5) is BreakerState.CLOSED
    assert breaker.allow(11.6)


def test_abandoned_probe_frees_the_slot() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown_s=1))
    breaker.on_failure(0)
    assert breaker.allow(2)
    breaker.on_abandoned(2.5)
    assert breaker.allow(2.6)
