"""What the HTTP adapters share: timeouts, transport-error mapping, SSE, error bodies, streams.

`post_json` and `sse_deltas` take the router's `httpx.AsyncClient`; when it runs on the
aiohttp transport (`FastTransport`, the service's client) they send through its aiohttp
session directly, skipping httpx's request and response objects, with the same timeouts and
the same error classification. Any other client (httpx's pool, `httpx.MockTransport` in unit
tests) goes through httpx as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

import aiohttp
import httpx

from stepline_router.errors import Outcome, ProviderError, classify_status
from stepline_router.providers.base import AttemptLimits
from stepline_router.providers.transport import session_of
from stepline_router.retryafter import retry_after_seconds
from stepline_router.stream import Delta, Opened
from stepline_runtime.logs import redact

__all__ = [
    "Body",
    "ChunkParser",
    "ErrorMapper",
    "FramesFn",
    "aiohttp_error",
    "error_from_response",
    "httpx_timeout",
    "iter_sse",
    "json_or_malformed",
    "post_json",
    "safe_text",
    "sse_deltas",
    "stream_error",
    "transport_error",
]

log = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 500


def safe_text(text: str) -> str:
    """Provider text fit for errors and logs: credentials redacted, length bounded."""
    text = redact(text.strip())
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "…"


def httpx_timeout(limits: AttemptLimits) -> httpx.Timeout:
    """httpx timeouts: connect, and read (first byte, then between chunks of a stream)."""
    return httpx.Timeout(
        connect=limits.connect_s,
        read=limits.first_byte_s,
        write=limits.first_byte_s,
        pool=limits.connect_s,
    )


def transport_error(error: httpx.HTTPError) -> ProviderError:
    """Classify an httpx exception (no response, or a body cut short)."""
    name = type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        kind = "connect" if isinstance(error, httpx.ConnectTimeout | httpx.PoolTimeout) else "read"
        return ProviderError(Outcome.TIMED_OUT, f"{kind} timeout ({name})")
    detail = safe_text(str(error)) or name
    return ProviderError(Outcome.CONNECTION_FAILED, f"{name}: {detail}")


def aiohttp_error(error: aiohttp.ClientError) -> ProviderError:
    """Classify an aiohttp exception like `transport_error` does its httpx twin: only a real
    timeout is a timeout; a refused, reset or cut connection is a connection failure."""
    name = type(error).__name__
    if isinstance(error, aiohttp.ServerTimeoutError):
        kind = "read" if isinstance(error, aiohttp.SocketTimeoutError) else "connect"
        return ProviderError(Outcome.TIMED_OUT, f"{kind} timeout ({name})")
    detail = safe_text(str(error)) or name
    return ProviderError(Outcome.CONNECTION_FAILED, f"{name}: {detail}")


def _aiohttp_timeout(limits: AttemptLimits) -> aiohttp.ClientTimeout:
    """`httpx_timeout`'s meaning for aiohttp: connect (pool wait included), then each read."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=limits.connect_s,
        sock_connect=limits.connect_s,
        sock_read=limits.first_byte_s,
    )


def _log_sent(url: str, status: int) -> None:
    """A debug line per provider request, as httpx writes one (the query left out: some
    providers put a key there)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("provider request", extra={"url": url.partition("?")[0], "status": status})


def _direct_request(body: Mapping[str, Any] | bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """aiohttp's `data` and `headers` for what httpx sends with `json=` (compact UTF-8, JSON
    content type unless the adapter set one) or `content=` (the exact bytes, e.g. signed)."""
    if isinstance(body, bytes):
        return {"data": body, "headers": headers}
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    if not any(name.lower() == "content-type" for name in headers):
        headers = {**headers, "content-type": "application/json"}
    return {"data": data, "headers": headers}


def _error_fields(body: bytes) -> tuple[str, str]:
    """(error type or code, message) from an OpenAI- or Anthropic-style error body."""
    try:
        data = json.loads(body)
    except ValueError:
        return "", body.decode("utf-8", errors="replace")
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or ""
        code = error.get("code")
        if isinstance(code, str) and code not in str(kind):
            kind = f"{kind} {code}".strip()
        return str(kind), str(error.get("message", ""))
    if isinstance(error, str):
        return "", error
    return "", body.decode("utf-8", errors="replace")


def error_from_response(
    status: int, headers: Mapping[str, str], body: bytes, now: datetime
) -> ProviderError:
    """A classified error for a non-2xx response, with its Retry-After if any."""
    kind, message = _error_fields(body)
    outcome = classify_status(status, kind.split(" ")[0], f"{kind} {message}")
    text = safe_text(f"HTTP {status} {kind}: {message}".replace("  ", " "))
    return ProviderError(
        outcome, text, status_code=status, retry_after_s=retry_after_seconds(headers, now)
    )


def stream_error(payload: Any, status: int) -> ProviderError:
    """A classified error for an error event inside a 200 stream (a server failure, unless the
    provider says the content was refused or the prompt is too long)."""
    kind, message = _error_fields(json.dumps({"error": payload}).encode())
    outcome = classify_status(500, kind.split(" ")[0], f"{kind} {message}")
    if outcome is Outcome.SERVER_ERROR:
        refused = classify_status(400, kind.split(" ")[0], f"{kind} {message}")
        if refused in (Outcome.CONTENT_REFUSED, Outcome.CONTEXT_TOO_LONG):
            outcome = refused
    return ProviderError(outcome, safe_text(f"stream error {kind}: {message}"), status_code=status)


async def iter_sse(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (event name, data) pairs; comments and ids are ignored."""
    async for item in _sse_events(response.aiter_lines()):
        yield item


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Text lines of a byte stream (LF or CRLF), however the chunks cut them."""
    rest = b""
    async for chunk in chunks:
        rest += chunk
        if b"\n" not in chunk:
            continue
        *whole, rest = rest.split(b"\n")
        for line in whole:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if rest:
        yield rest.rstrip(b"\r").decode("utf-8", errors="replace")


async def _sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    event, data = "", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", list[str]()
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        yield event or "message", "\n".join(data)


def json_or_malformed(text: str, status: int, what: str) -> Any:
    """`json.loads(text)`, or a MALFORMED_RESPONSE error naming `what`."""
    try:
        return json.loads(text)
    except ValueError as error:
        raise ProviderError(
            Outcome.MALFORMED_RESPONSE,
            f"{what} is not valid JSON: {safe_text(text[:120])}",
            status_code=status,
        ) from error


NowFn = Callable[[], datetime]
# How an adapter turns a non-2xx answer into a classified error (its provider's error body).
ErrorMapper = Callable[[int, Mapping[str, str], bytes, datetime], ProviderError]
# A JSON body, or its exact bytes (a signed request must send the bytes it signed).
Body = Mapping[str, Any] | bytes
# A provider's stream framing: a 2xx streamed response → (event name, data) pairs.
FramesFn = Callable[[httpx.Response], AsyncIterator[tuple[str, str]]]


def _content(body: Body) -> dict[str, Any]:
    return {"content": body} if isinstance(body, bytes) else {"json": dict(body)}


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    body: Body,
    limits: AttemptLimits,
    now: datetime,
    *,
    errors: ErrorMapper = error_from_response,
) -> tuple[Any, int]:
    """POST a JSON request within the attempt's limits; the decoded body and its status."""
    session = session_of(client)
    if session is not None:
        return await _post_json_direct(session, url, headers, body, limits, now, errors)
    try:
        async with asyncio.timeout(limits.total_s):
            response = await client.post(
                url, **_content(body), headers=dict(headers), timeout=httpx_timeout(limits)
            )
    except TimeoutError as error:
        raise ProviderError(Outcome.TIMED_OUT, f"total timeout {limits.total_s:.1f}s") from error
    except httpx.HTTPError as error:
        raise transport_error(error) from error
    if not response.is_success:
        raise errors(response.status_code, response.headers, response.content, now)
    return json_or_malformed(response.text, response.status_code, "response body"), (
        response.status_code
    )


async def _post_json_direct(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    body: Body,
    limits: AttemptLimits,
    now: datetime,
    errors: ErrorMapper,
) -> tuple[Any, int]:
    """`post_json` straight on aiohttp (same limits, same errors)."""
    try:
        async with asyncio.timeout(limits.total_s):
            try:
                async with session.post(
                    url, **_direct_request(body, headers), timeout=_aiohttp_timeout(limits)
                ) as response:
                    raw = await response.read()
            except aiohttp.ClientError as error:
                raise aiohttp_error(error) from error
            _log_sent(url, response.status)
    except TimeoutError as error:
        raise ProviderError(Outcome.TIMED_OUT, f"total timeout {limits.total_s:.1f}s") from error
    status = response.status
    if not 200 <= status < 300:
        raise errors(status, response.headers, raw, now)
    return json_or_malformed(raw.decode("utf-8", errors="replace"), status, "response body"), (
        status
    )


class ChunkParser(Protocol):
    """Turns one provider's server-sent events into deltas; knows its end-of-stream marker."""

    @property
    def ended(self) -> bool:
        """Whether the stream reached its proper end (no more events are to be read)."""
        ...

    @property
    def complete(self) -> bool:
        """Whether a stream that ends here (the connection closed cleanly) is whole."""
        ...

    @property
    def end_marker(self) -> str:
        """What a complete stream ends with, for the error when it is missing."""
        ...

    def feed(self, event: str, data: str, status: int) -> Iterable[Delta]:
        """The deltas of one event; `ProviderError` for a malformed or error event."""
        ...


def _check_whole(parser: ChunkParser, status: int) -> None:
    """A stream the server closed cleanly is still cut short without its end marker."""
    if not parser.complete:
        raise ProviderError(
            Outcome.CONNECTION_FAILED,
            f"stream ended before {parser.end_marker}",
            status_code=status,
        )


async def sse_deltas(
    client: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    body: Body,
    limits: AttemptLimits,
    now: NowFn,
    parser: ChunkParser,
    *,
    errors: ErrorMapper = error_from_response,
    frames: FramesFn = iter_sse,
) -> AsyncIterator[Delta]:
    """POST a streaming request and yield its deltas; the one stream loop every adapter shares.

    Server-sent events unless `frames` reads another framing (AWS event streams); `errors`
    classifies a non-2xx answer in the provider's own taxonomy.
    Ends only after `parser` saw the provider's end of stream; anything else (non-2xx, a cut
    connection, a malformed or error event, an early end) raises a classified `ProviderError`.
    """
    # Another framing reads an httpx response: that adapter keeps the httpx path.
    session = session_of(client) if frames is iter_sse else None
    if session is not None:
        async for delta in _sse_deltas_direct(
            session, url, headers, body, limits, now, parser, errors
        ):
            yield delta
        return
    status = 0
    try:
        async with client.stream(
            "POST", url, **_content(body), headers=dict(headers), timeout=httpx_timeout(limits)
        ) as response:
            status = response.status_code
            if not response.is_success:
                raw = await response.aread()
                raise errors(status, response.headers, raw, now())
            yield Opened(status)
            async for event, data in frames(response):
                for delta in parser.feed(event, data, status):
                    yield delta
                if parser.ended:
                    return
    except httpx.HTTPError as error:
        failure = transport_error(error)
        failure.status_code = status
        raise failure from error
    _check_whole(parser, status)


async def _sse_deltas_direct(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    body: Body,
    limits: AttemptLimits,
    now: NowFn,
    parser: ChunkParser,
    errors: ErrorMapper,
) -> AsyncIterator[Delta]:
    """`sse_deltas` straight on aiohttp (same limits, same errors, same end-of-stream rule)."""
    status = 0
    try:
        async with session.post(
            url, **_direct_request(body, headers), timeout=_aiohttp_timeout(limits)
        ) as response:
            status = response.status
            _log_sent(url, status)
            if not 200 <= status < 300:
                raw = await response.read()
                raise errors(status, response.headers, raw, now())
            yield Opened(status)
            async for event, data in _sse_events(_lines(response.content.iter_any())):
                for delta in parser.feed(event, data, status):
                    yield delta
                if parser.ended:
                    return
    except aiohttp.ClientError as error:
        failure = aiohttp_error(error)
        failure.status_code = status
        raise failure from error
    _check_whole(parser, status)
