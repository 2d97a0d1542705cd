"""Test doubles shared by the executor tests: a scriptable tool and a local HTTP server."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stepline_executor.model import CallContext, ToolError, ToolOutput, ToolSpec
from stepline_executor.tools.base import SchemaArguments

__all__ = ["LocalServer", "ScriptedTool", "Seen"]


@dataclass
class ScriptedTool:
    """A tool whose behaviour the test controls; counts runs and concurrency."""

    spec: ToolSpec
    output: str = '{"ok": true}'
    delay_s: float = 0.0
    fail: str | None = None
    crash: bool = False
    # Raised as is (e.g. ToolNotSentError) when set.
    error: Exception | None = None
    # What the tool reports about its request before it blocks (None: says nothing).
    sent: bool | None = None
    runs: list[CallContext] = field(default_factory=list)
    running: int = 0
    peak: int = 0
    gate: asyncio.Event | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def named(cls, name: str, sent: bool | None = None, **spec: Any) -> ScriptedTool:
        """A tool taking `{"x": integer}`."""
        schema = {
            "type": "object",
            "properties": {"x": {"type": "integer"}},
            "required": ["x"],
            "additionalProperties": False,
        }
        spec_ = ToolSpec(name=name, description=f"test tool {name}", parameters=schema, **spec)
        return cls(spec_, sent=sent)

    def parse(self, arguments: dict[str, Any]) -> dict[str, Any]:
        return SchemaArguments(self.spec.parameters).parse(arguments)

    async def run(self, parsed: dict[str, Any], context: CallContext) -> ToolOutput:
        self.runs.append(context)
        if self.sent is not None:
            context.progress.sent = self.sent
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.crash:
                raise RuntimeError("boom")
            if self.fail:
                raise ToolError(self.fail)
            if self.error is not None:
                raise self.error
            return ToolOutput(self.output)
        finally:
            self.running -= 1


@dataclass
class Seen:
    """One request a `LocalServer` received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Responder = Callable[[Seen], tuple[int, dict[str, str], bytes]]


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 that records requests and answers via `respond`."""

    def __init__(self, respond: Responder | None = None) -> None:
        self.seen: list[Seen] = []
        self.respond: Responder = respond or (lambda s: (200, {}, json.dumps({"ok": 1}).encode()))
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                outer.seen.append(seen)
                status, headers, body = outer.respond(seen)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str = "/") -> str:
        """URL of `path` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"
