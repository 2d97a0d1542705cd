"""The circuit breaker over real HTTP on loopback: a dead primary costs nothing once detected.

Time is a `ManualClock`: the breaker's cooldown passes when the test advances it, so nothing
here waits or asserts on wall-clock time. The HTTP itself is real (httpx to local servers).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from stepline_router.breaker import BreakerState
from stepline_router.clock import ManualClock
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome
from stepline_router.providers.openai import OpenAIProvider
from stepline_router.router import CallSucceeded, Router
from stepline_router.routes import RoutesConfig
from tests.router.fakes import FakeProvider, Reply, closed_port, openai_completion, openai_error
from tests.router.support import BOOK, pair_routes, request

THRESHOLD = 3
COOLDOWN_S = 30.0
OPEN_REQUESTS = 100


class _PinnedProvider(FakeProvider):
    """A fake provider that listens on a given port (where a refused primary used to be)."""

    async def start_on(self, port: int) -> _PinnedProvider:
        """Listen on 127.0.0.1:`port`."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = port
        return self


def _answer(text: str) -> Reply:
    return Reply(body=openai_completion(text))


@pytest.fixture
async def fallback() -> AsyncIterator[FakeProvider]:
    """A healthy OpenAI-compatible fallback."""
    server = await FakeProvider(lambda _: _answer("from fallback")).start()
    try:
        yield server
    finally:
        await server.stop()


def _config(primary_url: str, fallback_url: str) -> RoutesConfig:
    breaker = f"failure_threshold = {THRESHOLD}\nwindow_s = 60\ncooldown_s = {COOLDOWN_S}"
    return pair_routes(
        f"{primary_url}/v1",
        f"{fallback_url}/v1",
        "openai_compatible",
        "gpt-4o-mini",
        timeouts="{ connect_s = 2, first_byte_s = 5, total_s = 10 }",
        breaker=breaker,
    )


def _router(config: RoutesConfig, client: httpx.AsyncClient, clock: ManualClock) -> Router:
    return Router(
        routes=lambda: config,
        prices=lambda: BOOK,
        providers={"openai_compatible": OpenAIProvider(client, clock.now)},
        credentials=StaticCredentials({"KEY": "sk-test"}),
        clock=clock,
        random=random.Random(3).random,
    )


async def _succeeds_on(router: Router, deployment: str) -> CallSucceeded:
    outcome = await router.complete(request())
    assert isinstance(outcome, CallSucceeded), outcome
    assert outcome.deployment.name == deployment, outcome.attempts
    assert outcome.completion.content == f"from {deployment}"
    return outcome


async def _open_phase(router: Router, clock: ManualClock, primary: FakeProvider) -> None:
    """With the circuit open, 100 requests all go to the fallback and none to the primary."""
    assert router.breaker("primary").state(clock.monotonic()) is BreakerState.OPEN
    seen = len(primary.received)
    for _ in range(OPEN_REQUESTS):
        clock.advance(0.1)  # time moves, but stays inside the cooldown
        outcome = await _succeeds_on(router, "fallback")
        assert [(a.deployment, a.outcome, a.sent) for a in outcome.attempts] == [
            ("primary", Outcome.CIRCUIT_OPEN, False),
            ("fallback", Outcome.SUCCEEDED, True),
        ]
    assert len(primary.received) == seen


async def _recovery(router: Router, clock: ManualClock, primary: FakeProvider) -> None:
    """Past the cooldown one probe reaches the recovered primary, which is then used again."""
    seen = len(primary.received)
    clock.advance(COOLDOWN_S)
    assert router.breaker("primary").state(clock.monotonic()) is BreakerState.HALF_OPEN
    probe = await _succeeds_on(router, "primary")
    assert [a.outcome for a in probe.attempts] == [Outcome.SUCCEEDED]
    assert router.breaker("primary").state(clock.monotonic()) is BreakerState.CLOSED
    for _ in range(3):
        await _succeeds_on(router, "primary")
    assert len(primary.received) == seen + 4


async def test_refused_primary_fails_over_opens_and_recovers(
    client: httpx.AsyncClient, fallback: FakeProvider
) -> None:
    port = closed_port()
    clock = ManualClock()
    router = _router(_config(f"http://127.0.0.1:{port}", fallback.url), client, clock)
    for _ in range(THRESHOLD):
        outcome = await _succeeds_on(router, "fallback")
        assert outcome.attempts[0].outcome is Outcome.CONNECTION_FAILED
        assert outcome.attempts[0].sent
    # The primary comes back on its port while the circuit is still open: every request that
    # reached it would be counted, so zero proves the open circuit sent nothing there.
    primary = await _PinnedProvider(lambda _: _answer("from primary")).start_on(port)
    try:
        await _open_phase(router, clock, primary)
        assert primary.received == []
        await _recovery(router, clock, primary)
    finally:
        await primary.stop()
    assert len(fallback.received) == THRESHOLD + OPEN_REQUESTS


async def test_503_primary_is_not_touched_while_open_then_recovers(
    client: httpx.AsyncClient, fallback: FakeProvider
) -> None:
    primary = await FakeProvider(lambda _: openai_error(503, "overloaded", "server_error")).start()
    try:
        clock = ManualClock()
        router = _router(_config(primary.url, fallback.url), client, clock)
        while router.breaker("primary").state(clock.monotonic()) is not BreakerState.OPEN:
            outcome = await _succeeds_on(router, "fallback")
            assert outcome.attempts[0].outcome is Outcome.OVERLOADED
            assert outcome.attempts[0].status_code == 503
            assert len(fallback.received) <= THRESHOLD  # opens within THRESHOLD requests
        # Each 503 is a failure counted by the breaker; it opened on the THRESHOLD-th.
        assert len(primary.received) == THRESHOLD
        await _open_phase(router, clock, primary)
        assert len(primary.received) == THRESHOLD
        primary.default = lambda _: _answer("from primary")
        await _recovery(router, clock, primary)
    finally:
        await primary.stop()


async def test_failed_half_open_probe_reopens_without_a_second_touch(
    client: httpx.AsyncClient, fallback: FakeProvider
) -> None:
    primary = await FakeProvider(lambda _: openai_error(503, "overloaded", "server_error")).start()
    try:
        clock = ManualClock()
        router = _router(_config(primary.url, fallback.url), client, clock)
        while router.breaker("primary").state(clock.monotonic()) is not BreakerState.OPEN:
            await _succeeds_on(router, "fallback")
        clock.advance(COOLDOWN_S)
        probe = await _succeeds_on(router, "fallback")
        # One probe only: it failed, the circuit re-opened, the retry was not sent.
        assert [(a.deployment, a.outcome, a.sent) for a in probe.attempts] == [
            ("primary", Outcome.OVERLOADED, True),
            ("primary", Outcome.CIRCUIT_OPEN, False),
            ("fallback", Outcome.SUCCEEDED, True),
        ]
        assert len(primary.received) == THRESHOLD + 1
        await _open_phase(router, clock, primary)
        assert len(primary.received) == THRESHOLD + 1
    finally:
        await primary.stop()
