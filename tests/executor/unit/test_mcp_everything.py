"""The executor against the reference MCP server `@modelcontextprotocol/server-everything`.

Real node processes (stdio and streamable HTTP) from the pinned npm package: tools offered under
provider-safe names, a server killed mid-call, a server that is down.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from stepline_executor.executor import Executor
from stepline_executor.model import CallRequest, ErrorKind
from stepline_executor.names import SAFE_NAME
from stepline_executor.outcomes import InMemoryOutcomeStore
from stepline_executor.registry import Access, Registry
from stepline_executor.tools.mcp import McpLink, McpServerConfig
from tests.executor.everything import free_port, install, serve_http

OPEN = Access(tenants={"*": ("*",)}, agents={"*": ("*",)})
_calls = iter(range(1_000_000))


def _request(tool: str, arguments: str) -> CallRequest:
    call = f"r1:1:{next(_calls)}"
    return CallRequest("r1", "acme", "r1:1", call, tool, arguments, agent="support")


@asynccontextmanager
async def _executor(config: McpServerConfig) -> AsyncIterator[tuple[Executor, Registry, McpLink]]:
    registry = Registry()
    link = McpLink(config, lambda server, tools: registry.replace_source(f"mcp:{server}", tools))
    link.start()
    try:
        assert await link.wait_ready(60)
        now: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731
        yield (
            Executor(registry, OPEN, InMemoryOutcomeStore(), clock=now, monotonic=time.monotonic),
            registry,
            link,
        )
    finally:
        await link.stop()


def _stdio(**overrides: object) -> McpServerConfig:
    node = shutil.which("node")
    assert node is not None, "node is needed for the MCP reference server"
    return McpServerConfig(
        name="everything",
        transport="stdio",
        command=node,
        args=(str(install()), "stdio"),
        **overrides,  # type: ignore[arg-type]
    )


def _http(port: int, **overrides: object) -> McpServerConfig:
    install()
    return McpServerConfig(
        name="everything",
        transport="http",
        url=f"http://127.0.0.1:{port}/mcp",
        timeout_s=20,
        **overrides,  # type: ignore[arg-type]
    )


async def test_reference_server_tools_are_offered_under_provider_safe_names() -> None:
    async with _executor(_stdio()) as (executor, registry, _):
        names = registry.names()
        assert "everything__get-sum" in names
        assert "everything__echo" in names
        assert all(SAFE_NAME.fullmatch(name) for name in names)
        tool = registry.get("everything__get-sum")
        assert tool is not None
        assert tool.original == "everything.get-sum"
        outcome = await executor.execute(_request("everything__get-sum", '{"a": 7, "b": 5}'))
        assert outcome.succeeded, outcome.message
        assert outcome.output == "The sum of 7 and 5 is 12."


async def test_server_killed_mid_call_is_outcome_unknown_for_a_non_idempotent_tool() -> None:
    port = free_port()
    long_call = '{"duration": 10, "steps": 5}'
    for idempotent, expected in (
        (False, ErrorKind.OUTCOME_UNKNOWN),
        (True, ErrorKind.EXECUTION_FAILED),
    ):
        with serve_http(port) as server:
            async with _executor(_http(port, idempotent=idempotent)) as (executor, _, _):
                running = asyncio.create_task(
                    executor.execute(
                        _request("everything__trigger-long-running-operation", long_call)
                    )
                )
                await asyncio.sleep(1.0)  # the server is working on it
                server.kill()
                outcome = await asyncio.wait_for(running, 15)
        assert outcome.error_kind is expected, outcome.message
        assert outcome.executed
        assert "went away during the call" in outcome.message
        assert outcome.retryable is idempotent


async def test_a_server_that_is_down_fails_the_call_at_once_as_not_sent() -> None:
    port = free_port()
    with serve_http(port) as server:
        async with _executor(_http(port, ping_interval_s=0.2)) as (executor, _, link):
            server.kill()
            server.wait(10)
            # The link notices the server is gone (a failed ping, then failed reconnects) ...
            for _ in range(100):
                if not link.connected:
                    break
                await asyncio.sleep(0.1)
            assert not link.connected
            started = time.monotonic()
            outcome = await executor.execute(_request("everything__get-sum", '{"a": 1, "b": 2}'))
            elapsed = time.monotonic() - started
    # ... and a call then fails within a second, not after the 20 s tool timeout.
    assert elapsed < 1.0
    assert outcome.error_kind is ErrorKind.EXECUTION_FAILED
    assert "unreachable" in outcome.message
    assert "nothing was sent" in outcome.message
    assert outcome.retryable
    assert not outcome.executed
