"""MCP tools: mount the tools of configured MCP servers (stdio or streamable HTTP) as
`<server>.<tool>` (published under the provider-safe name the registry gives them), keep one
session per server, and restart a server whose session died.

A call to a server that is down fails at once as not sent; a call whose session dies while it
runs may have reached the server, so it fails as interrupted (the executor reports a
non-idempotent tool's call as `OUTCOME_UNKNOWN`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
from mcp import Client, MCPError, StdioServerParameters
from mcp_types import CONNECTION_CLOSED, CallToolResult, TextContent

from stepline_executor.model import (
    CallContext,
    CallProgress,
    ToolError,
    ToolInterruptedError,
    ToolNotSentError,
    ToolOutput,
    ToolSpec,
)
from stepline_executor.tools.base import SchemaArguments

__all__ = ["McpLink", "McpServerConfig", "McpTool"]

log = logging.getLogger(__name__)

_LINK_ERRORS = (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError, EOFError)


@dataclass(frozen=True, slots=True)
class McpServerConfig:
    """One MCP server from config; its tools become `<name>.<tool>`."""

    name: str
    transport: Literal["stdio", "http"]
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    url: str = ""
    idempotent: bool = False
    requires_approval: bool = False
    timeout_s: float = 30.0
    max_concurrency: int = 4
    max_output_bytes: int = 16_384
    # Remote tool names to mount; empty mounts all of them.
    tools: tuple[str, ...] = ()
    connect_timeout_s: float = 20.0
    ping_interval_s: float = 5.0


ToolsChanged = Callable[[str, Sequence["McpTool"]], None]


class McpLink:
    """One supervised session to one MCP server: connect, list tools, serve calls, restart."""

    def __init__(self, config: McpServerConfig, on_tools: ToolsChanged) -> None:
        self.config = config
        self._on_tools = on_tools
        self._client: Client | None = None
        self._ready = asyncio.Event()
        self._broken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Why the last connection attempt failed; None while connected or before the first.
        self._down: str | None = None
        # Incremented on every successful (re)connection; tests wait on it after a crash.
        self.generation = 0

    @property
    def source(self) -> str:
        """Registry source tag of this server's tools."""
        return f"mcp:{self.config.name}"

    @property
    def connected(self) -> bool:
        """Whether a live session is up now."""
        return self._ready.is_set()

    def start(self) -> None:
        """Start supervising (connects in the background)."""
        self._task = asyncio.create_task(self._supervise(), name=f"mcp-{self.config.name}")

    async def stop(self) -> None:
        """Close the session and stop supervising."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until connected; False on timeout."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        timeout_s: float,
        progress: CallProgress | None = None,
    ) -> CallToolResult:
        """Call remote tool `name`; a dead session is reported and restarted.

        Raises `ToolNotSentError` when the server is not connected (at once when the last
        connection attempt failed: waiting would only burn the call's deadline) and
        `ToolInterruptedError` when the session died after the request was handed to it.
        """
        client = self._client if self._ready.is_set() else None
        if client is None and self._down is None:
            # The first connection is still being made: give it its connect time.
            await self.wait_ready(min(timeout_s, self.config.connect_timeout_s))
            client = self._client if self._ready.is_set() else None
        if progress is not None:
            progress.sent = False
        if client is None:
            why = f" ({self._down})" if self._down else ""
            raise ToolNotSentError(
                f"MCP server {self.config.name!r} is unreachable{why}; nothing was sent"
            )
        if progress is not None:
            progress.sent = True  # handed to the session: it may reach the server
        try:
            return await client.call_tool(name, arguments, read_timeout_seconds=timeout_s)
        except MCPError as error:
            if error.code == CONNECTION_CLOSED:
                self._mark_broken()
                raise ToolInterruptedError(
                    f"MCP server {self.config.name!r} went away during the call; it is being"
                    " restarted"
                ) from None
            raise ToolError(f"MCP server {self.config.name!r} error: {error}") from None
        except _LINK_ERRORS as error:
            self._mark_broken()
            raise ToolInterruptedError(
                f"MCP server {self.config.name!r} connection failed during the call"
                f" ({type(error).__name__})"
            ) from None

    def _mark_broken(self) -> None:
        self._down = "its session was lost; reconnecting"
        self._ready.clear()
        self._broken.set()

    def _target(self) -> StdioServerParameters | str:
        if self.config.transport == "stdio":
            return StdioServerParameters(
                command=self.config.command,
                args=list(self.config.args),
                env=dict(self.config.env) or None,
                cwd=self.config.cwd,
            )
        return self.config.url

    async def _supervise(self) -> None:
        backoff = 0.5
        while True:
            try:
                # Enter and leave the client in this one task: anyio scopes must not migrate.
                async with Client(self._target(), read_timeout_seconds=self.config.timeout_s) as c:
                    listing = await asyncio.wait_for(c.list_tools(), self.config.connect_timeout_s)
                    self._client = c
                    self._down = None
                    self._broken.clear()
                    self.generation += 1
                    self._on_tools(self.config.name, self._mount(listing.tools))
                    self._ready.set()
                    backoff = 0.5
                    log.info("MCP server connected", extra={"mcp_server": self.config.name})
                    await self._watch(c, frozenset(t.name for t in listing.tools))
                    self._down = "its session was lost; reconnecting"
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._down = _reason(error)
                log.warning(
                    "MCP server unavailable; retrying",
                    extra={"mcp_server": self.config.name, "reason": self._down},
                )
            finally:
                self._ready.clear()
                self._client = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _watch(self, client: Client, mounted: frozenset[str]) -> None:
        """Return when the session is known broken (a failed call or probe); re-mount changes."""
        while not self._broken.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._broken.wait(), self.config.ping_interval_s)
            if self._broken.is_set():
                return
            try:
                # Listing the tools is the probe every protocol version answers (ping is gone
                # from the 2026-07-28 revision); it also sees tools added or removed.
                listing = await asyncio.wait_for(
                    client.list_tools(cache_mode="bypass"), self.config.connect_timeout_s
                )
            except (MCPError, TimeoutError, *_LINK_ERRORS):
                log.warning("MCP server stopped answering", extra={"mcp_server": self.config.name})
                return
            names = frozenset(t.name for t in listing.tools)
            if names != mounted:
                mounted = names
                self._on_tools(self.config.name, self._mount(listing.tools))
                log.info("MCP server's tools changed", extra={"mcp_server": self.config.name})

    def _mount(self, remote: Sequence[Any]) -> list[McpTool]:
        mounted = []
        for tool in remote:
            if self.config.tools and tool.name not in self.config.tools:
                continue
            try:
                arguments = SchemaArguments(tool.input_schema)
            except ValueError as error:
                log.warning(
                    "MCP tool skipped: %s",
                    error,
                    extra={"mcp_server": self.config.name, "tool": tool.name},
                )
                continue
            spec = ToolSpec(
                name=f"{self.config.name}.{tool.name}",
                description=tool.description or tool.name,
                parameters=arguments.schema,
                source=self.source,
                idempotent=self.config.idempotent,
                requires_approval=self.config.requires_approval,
                timeout_s=self.config.timeout_s,
                max_concurrency=self.config.max_concurrency,
                max_output_bytes=self.config.max_output_bytes,
            )
            mounted.append(McpTool(spec, self, tool.name, arguments))
        return mounted


def _reason(error: BaseException) -> str:
    """A short, secret-free reason: the innermost exception type of an anyio group."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    cause = error.__cause__ or error.__context__
    name = type(error).__name__
    if isinstance(cause, OSError | ConnectionError) and not isinstance(error, OSError):
        name = f"{name}: {type(cause).__name__}"
    return f"connection failed: {name}"


@dataclass(frozen=True)
class McpTool:
    """One mounted MCP tool."""

    spec: ToolSpec
    link: McpLink
    remote_name: str
    arguments: SchemaArguments

    def parse(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Arguments valid against the server's input schema."""
        return self.arguments.parse(arguments)

    async def run(self, parsed: dict[str, Any], context: CallContext) -> ToolOutput:
        """Call the remote tool; structured content is returned as JSON, else the text."""
        result = await self.link.call(self.remote_name, parsed, context.timeout_s, context.progress)
        text = "\n".join(b.text for b in result.content if isinstance(b, TextContent))
        if result.is_error:
            raise ToolError(text or f"MCP tool {self.spec.name!r} failed")
        if result.structured_content is not None:
            return ToolOutput(json.dumps(result.structured_content, ensure_ascii=False))
        return ToolOutput(text, "text/plain")
