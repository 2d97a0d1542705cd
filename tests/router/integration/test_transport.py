"""The aiohttp transport keeps connection errors connection errors (real sockets on loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.base import AttemptLimits
from stepline_router.providers.http import post_json
from stepline_router.providers.transport import FastTransport, session_of
from tests.router.fakes import FakeProvider, Reply, closed_port, openai_chunks

LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=10)


@pytest.fixture
async def fast() -> AsyncIterator[httpx.AsyncClient]:
    """A client on the router's transport."""
    async with httpx.AsyncClient(transport=FastTransport(LIMITS)) as client:
        yield client


@pytest.fixture
async def server() -> AsyncIterator[FakeProvider]:
    """A provider server with queued faults."""
    fake = await FakeProvider().start()
    try:
        yield fake
    finally:
        await fake.stop()


async def test_the_library_alone_reports_a_refused_connection_as_a_timeout() -> None:
    # Why FastTransport exists: httpx-aiohttp 0.2.0's own error table.
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.ConnectTimeout):
            await client.get(f"http://127.0.0.1:{closed_port()}/")


async def test_refused_connection_stays_a_connection_error(fast: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError) as error:
        await fast.get(f"http://127.0.0.1:{closed_port()}/", timeout=2)
    assert not isinstance(error.value, httpx.TimeoutException)


async def test_reset_mid_body_is_a_read_error_not_a_timeout(
    fast: httpx.AsyncClient, server: FakeProvider
) -> None:
    server.queue(Reply(body={"x": "y" * 10_000}, reset_mid_body=True))
    with pytest.raises(httpx.TransportError) as error:
        await fast.post(f"{server.url}/v1/chat/completions", json={}, timeout=2)
    assert isinstance(error.value, httpx.ReadError | httpx.RemoteProtocolError)


async def test_stream_cut_mid_way_is_a_read_error_not_a_timeout(
    fast: httpx.AsyncClient, server: FakeProvider
) -> None:
    server.queue(Reply(events=openai_chunks(["a", "b", "c"]), cut_after=2))
    with pytest.raises(httpx.TransportError) as error:
        async with fast.stream("POST", f"{server.url}/x", json={}, timeout=2) as response:
            await response.aread()
    assert not isinstance(error.value, httpx.TimeoutException)


async def test_a_silent_server_is_a_read_timeout(
    fast: httpx.AsyncClient, server: FakeProvider
) -> None:
    server.queue(Reply(body={}, delay_s=2))
    with pytest.raises(httpx.ReadTimeout):
        await fast.post(f"{server.url}/x", json={}, timeout=httpx.Timeout(5, read=0.3))


async def test_the_shared_helpers_send_on_aiohttp_directly_with_the_same_errors(
    fast: httpx.AsyncClient, server: FakeProvider
) -> None:
    assert session_of(fast) is not None  # post_json / sse_deltas skip httpx on this client
    assert session_of(httpx.AsyncClient()) is None
    limits = AttemptLimits(connect_s=1, first_byte_s=0.3, total_s=5)
    now = datetime.now(UTC)
    with pytest.raises(ProviderError) as refused:
        await post_json(fast, f"http://127.0.0.1:{closed_port()}/x", {}, {}, limits, now)
    assert refused.value.outcome is Outcome.CONNECTION_FAILED
    server.queue(Reply(body={}, delay_s=2))
    with pytest.raises(ProviderError) as silent:
        await post_json(fast, f"{server.url}/x", {}, {}, limits, now)
    assert silent.value.outcome is Outcome.TIMED_OUT
    assert "read timeout" in silent.value.message
    server.queue(Reply(body={"ok": "é"}))
    assert await post_json(fast, f"{server.url}/x", {}, {"q": "é"}, limits, now) == (
        {"ok": "é"},
        200,
    )
    assert server.received[-1].body == {"q": "é"}
