"""MCP tools mounted from real MCP server processes (official SDK), stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepline_executor.model import ArgumentsError, CallContext, ToolError
from stepline_executor.registry import Registry
from stepline_executor.tools.mcp import McpLink, McpServerConfig, McpTool

ROOT = Path(__file__).resolve().parents[3]
CTX = CallContext(tenant_id="acme", run_id="r", call_id="r:1:0", idempotency_key="k", timeout_s=20)


def _mount(config: McpServerConfig) -> tuple[McpLink, Registry]:
    registry = Registry()

    def on_tools(server: str, tools: object) -> None:
        registry.replace_source(f"mcp:{server}", tools)  # type: ignore[arg-type]

    return McpLink(config, on_tools), registry


def _tool(registry: Registry, name: str) -> McpTool:
    public = registry.get(name)
    assert public is not None
    assert isinstance(public.tool, McpTool)
    return public.tool


async def test_stdio_server_tools_are_mounted_and_a_crashed_server_is_restarted() -> None:
    link, registry = _mount(
        McpServerConfig(
            name="demo",
            transport="stdio",
            command=sys.executable,
            args=("-m", "tests.executor.mcp_server"),
            cwd=ROOT,
            ping_interval_s=0.5,
        )
    )
    link.start()
    try:
        assert await link.wait_ready(30)
        assert registry.names() == ["demo__add", "demo__crash", "demo__retire_shout", "demo__shout"]
        add = _tool(registry, "demo__add")
        assert add.spec.source == "mcp:demo"
        assert add.spec.parameters["required"] == ["a", "b"]
        output = await add.run(add.parse({"a": 2, "b": 40}), CTX)
        assert json.loads(output.text) == {"result": 42}
        with pytest.raises(ArgumentsError, match="'x' is not of type 'integer'"):
            add.parse({"a": "x", "b": 1})

        generation = link.generation
        with pytest.raises(ToolError, match="went away") as crashed:
            await _tool(registry, "demo__crash").run({}, CTX)
        assert crashed.value.retryable
        # The failed call marked the session broken; ready again means a fresh process.
        assert await link.wait_ready(30)
        assert link.generation == generation + 1
        shout = _tool(registry, "demo__shout")
        output = await shout.run(shout.parse({"text": "back"}), CTX)
        assert json.loads(output.text) == {"result": "BACK"}

        # A tool the server stops offering leaves the registry at the next probe.
        await _tool(registry, "demo__retire_shout").run({}, CTX)
        for _ in range(100):
            if "demo__shout" not in registry.names():
                break
            await asyncio.sleep(0.05)
        assert registry.names() == ["demo__add", "demo__crash", "demo__retire_shout"]
    finally:
        await link.stop()


@pytest.fixture
def http_server() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.executor.mcp_server", "http", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def test_streamable_http_server_tools_are_mounted(http_server: int) -> None:
    link, registry = _mount(
        McpServerConfig(name="remote", transport="http", url=f"http://127.0.0.1:{http_server}/mcp")
    )
    link.start()
    try:
        # The server process may still be starting: the supervisor retries until it answers.
        assert await link.wait_ready(30)
        add = _tool(registry, "remote__add")
        output = await add.run(add.parse({"a": 1, "b": 2}), CTX)
        assert json.loads(output.text) == {"result": 3}
    finally:
        await link.stop()
