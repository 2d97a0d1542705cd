"""Circuit breaker per deployment: a dead provider costs no latency once detected."""

from __future__ import annotations

from collections import deque
from enum import StrEnum

from stepline_routes import BreakerPolicy

# `BreakerPolicy` is configuration: it lives with the routes file that sets it.
__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    """Closed: traffic flows. Open: nothing is sent. Half-open: one probe is allowed."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """State machine closed → open → half-open (single probe) → closed or open; clock passed in."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._failures: deque[float] = deque()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe_in_flight = False

    def state(self, now: float) -> BreakerState:
        """The state at monotonic time `now` (open turns half-open once the cooldown passed)."""
        if self._state is BreakerState.OPEN and now >= self._opened_at + self.policy.cooldown_s:
            self._state = BreakerState.HALF_OPEN
        return self._state

    def allow(self, now: float) -> bool:
        """Whether a request may be sent now; in half-open this reserves the single probe."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def on_success(self, now: float) -> None:
        """An attempt showed the deployment healthy: close and forget past failures."""
        self._state = BreakerState.CLOSED
        self._failures.clear()
        self._probe_in_flight = False

    def on_failure(self, now: float) -> None:
        """An attempt failed because of the deployment; a failed probe re-opens the circuit."""
        if self._state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        self._failures.append(now)
        while self._failures and self._failures[0] <= now - self.policy.window_s:
            self._failures.popleft()
        if len(self._failures) >= self.policy.failure_threshold:
            self._open(now)

    def on_abandoned(self, now: float) -> None:
        """An attempt ended without a verdict (cancelled): free the probe slot if it held it."""
        self._probe_in_flight = False

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._failures.clear()
        self._probe_in_flight = False
