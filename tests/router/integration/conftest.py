"""The outbound HTTP client of the router tests (httpx's own pool and the router's transport),
and loopback provider servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from stepline_router.providers.transport import FastTransport
from tests.router.fakes import FakeProvider


@pytest.fixture(params=["httpx", "aiohttp"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """Every provider fault test runs on both transports: the errors must mean the same."""
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    transport = FastTransport(limits) if request.param == "aiohttp" else None
    async with httpx.AsyncClient(transport=transport, limits=limits) as http:
        yield http


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FakeProvider, FakeProvider]]:
    """Two loopback provider servers (primary, fallback)."""
    a, b = await FakeProvider().start(), await FakeProvider().start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()
