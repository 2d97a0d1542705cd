"""Local provider servers for tests: real HTTP on loopback, real wire formats, faults on demand."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FakeProvider",
    "Reply",
    "anthropic_error",
    "anthropic_events",
    "anthropic_message",
    "closed_port",
    "openai_chunks",
    "openai_completion",
    "openai_embeddings",
    "openai_error",
]


@dataclass
class Reply:
    """One scripted HTTP answer (or fault)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Server-sent events (already formatted "event: x\ndata: y"), sent chunked.
    events: list[str] | None = None
    # Binary stream frames (AWS event stream), sent chunked like `events`.
    frames: list[bytes] | None = None
    # With `events` or `frames`: abort the connection after this many events (no terminating chunk).
    cut_after: int | None = None
    # Send headers and part of a Content-Length body, then reset the connection.
    reset_mid_body: bool = False
    # Raw body bytes (e.g. malformed JSON) instead of JSON-encoding `body`.
    raw: bytes | None = None
    # Wait this long before answering (longer than the client's read timeout = read timeout).
    delay_s: float = 0.0
    # With `events`: after this many events, send nothing more for `hang_s` (a stalled stream;
    # 0 = headers and then silence), then end the stream properly.
    hang_after: int | None = None
    hang_s: float = 30.0


@dataclass
class Received:
    """A request the server got."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    # The body as received (what a request signature covers).
    raw: bytes = b""


class FakeProvider:
    """An HTTP server answering with queued `Reply`s, then with `default(request)`."""

    def __init__(self, default: Callable[[Received], Reply] | None = None) -> None:
        self.replies: deque[Reply] = deque()
        self.default = default or (lambda _: Reply(500, {"error": {"message": "no reply"}}))
        self.received: list[Received] = []
        # Checked before any reply: an answer here (e.g. a failed signature) replaces it.
        self.guard: Callable[[Received], Reply | None] = lambda _: None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def queue(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, in order."""
        self.replies.extend(replies)

    async def start(self) -> FakeProvider:
        """Listen on an ephemeral loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # A stopped server cancels its handlers; ending quietly keeps the test log clean.
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, path, _ = line.decode().split(" ", 2)
        headers: dict[str, str] = {}
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body = json.loads(raw) if raw else None
        request = Received(method, path, headers, body, raw)
        self.received.append(request)
        reply = self.guard(request)
        if reply is None:
            reply = self.replies.popleft() if self.replies else self.default(request)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        return await self._send(reply, writer)

    async def _send(self, reply: Reply, writer: asyncio.StreamWriter) -> bool:
        head = [f"HTTP/1.1 {reply.status} X"]
        extra = {k.lower(): v for k, v in reply.headers.items()}
        chunks, kind = None, "text/event-stream"
        if reply.events is not None:
            chunks = [(event + "\n\n").encode() for event in reply.events]
        elif reply.frames is not None:
            chunks, kind = reply.frames, "application/vnd.amazon.eventstream"
        if chunks is not None:
            head += [f"content-type: {kind}", "transfer-encoding: chunked"]
            head += [f"{k}: {v}" for k, v in extra.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            for i, data in enumerate(chunks):
                if reply.hang_after is not None and i == reply.hang_after:
                    await writer.drain()
                    await asyncio.sleep(reply.hang_s)
                if reply.cut_after is not None and i >= reply.cut_after:
                    await writer.drain()
                    writer.transport.abort()
                    return False
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                await writer.drain()
            if reply.cut_after is not None:
                writer.transport.abort()
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
        if "content-type" not in extra:
            head.append("content-type: application/json")
        head.append(f"content-length: {len(payload)}")
        head += [f"{k}: {v}" for k, v in extra.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if reply.reset_mid_body:
            writer.write(payload[: len(payload) // 2])
            await writer.drain()
            writer.transport.abort()
            return False
        writer.write(payload)
        await writer.drain()
        return True


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def openai_completion(
    content: str | None = "hello",
    tool_calls: Iterable[tuple[str, str, str]] = (),
    *,
    model: str = "gpt-4o-mini",
    prompt_tokens: int = 11,
    completion_tokens: int = 7,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """A Chat Completions response body."""
    calls = [
        {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
        for i, n, a in tool_calls
    ]
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_790_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if calls else "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def openai_chunks(
    text: Iterable[str] = (),
    tool_calls: Iterable[tuple[str, str, list[str]]] = (),
    *,
    model: str = "gpt-4o-mini",
    usage: tuple[int, int] = (11, 7),
) -> list[str]:
    """SSE events of a streamed Chat Completion, incl. the usage chunk and [DONE]."""

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1_790_000_000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return "data: " + json.dumps(body)

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in text]
    calls = list(tool_calls)
    for index, (call_id, name, parts) in enumerate(calls):
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        events += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
            for part in parts
        ]
    events.append(chunk({}, "tool_calls" if calls else "stop"))
    final = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_790_000_000,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        },
    }
    events.append("data: " + json.dumps(final))
    events.append("data: [DONE]")
    return events


def openai_embeddings(
    vectors: Iterable[Iterable[float]], *, model: str = "text-embedding-3-small", tokens: int = 8
) -> dict[str, Any]:
    """An `/embeddings` response body (float encoding), items listed last-first as servers may."""
    data = [
        {"object": "embedding", "index": i, "embedding": list(vector)}
        for i, vector in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data[::-1],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def openai_error(status: int, message: str, kind: str, code: str | None = None) -> Reply:
    """An OpenAI-style error response."""
    return Reply(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})


def anthropic_message(
    text: str = "hello",
    tool_uses: Iterable[tuple[str, str, dict[str, Any]]] = (),
    *,
    model: str = "claude-haiku-4-5",
    input_tokens: int = 20,
    output_tokens: int = 9,
    cache_read: int = 0,
    cache_creation: int = 0,
) -> dict[str, Any]:
    """A Messages API response body."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in tool_uses]
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if any(c["type"] == "tool_use" for c in content) else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": cache_read,
            "cache_creation_input_tokens": cache_creation,
        },
    }


def anthropic_events(
    text: Iterable[str] = (),
    tool_use: tuple[str, str, list[str]] | None = None,
    *,
    model: str = "claude-haiku-4-5",
    input_tokens: int = 20,
    output_tokens: int = 9,
    cache_read: int = 0,
) -> list[str]:
    """SSE events of a streamed Message (message_start … message_stop)."""

    def event(kind: str, body: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: " + json.dumps({"type": kind, **body})

    start = anthropic_message("", model=model, input_tokens=input_tokens, output_tokens=1)
    start["usage"]["cache_read_input_tokens"] = cache_read
    start["stop_reason"] = None
    events = [event("message_start", {"message": start}), event("ping", {})]
    index = 0
    pieces = list(text)
    if pieces:
        events.append(
            event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            )
        )
        events += [
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
            for p in pieces
        ]
        events.append(event("content_block_stop", {"index": 0}))
        index = 1
    if tool_use is not None:
        call_id, name, parts = tool_use
        events.append(
            event(
                "content_block_start",
                {
                    "index": index,
                    "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}},
                },
            )
        )
        events += [
            event(
                "content_block_delta",
                {"index": index, "delta": {"type": "input_json_delta", "partial_json": p}},
            )
            for p in parts
        ]
        events.append(event("content_block_stop", {"index": index}))
    events.append(
        event(
            "message_delta",
            {
                "delta": {
                    "stop_reason": "tool_use" if tool_use else "end_turn",
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": output_tokens},
            },
        )
    )
    events.append(event("message_stop", {}))
    return events


def anthropic_error(status: int, kind: str, message: str) -> Reply:
    """An Anthropic-style error response."""
    return Reply(status, {"type": "error", "error": {"type": kind, "message": message}})
