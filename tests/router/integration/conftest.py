"""The outbound HTTP client of the router tests (httpx's own pool and the router's transport),
and loopback provider servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from stepline_router.providers.transport import FastTransport
from tests.llama import LLAMA_N_CTX, LlamaServer, llama_env
from tests.router.fakes import FakeProvider
from tests.router.support import free_port


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


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """One real llama.cpp server (SmolLM2-135M) for every test that needs one; tests that
    kill it start it again on the same port."""
    python, model = llama_env()
    log = Path(tmp_path_factory.mktemp("llama")) / "server.log"
    running = LlamaServer(python, model, free_port(), log, n_ctx=LLAMA_N_CTX).start()
    try:
        yield running
    finally:
        running.stop()
