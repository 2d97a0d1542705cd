"""The outbound HTTP transport: aiohttp under the httpx API, with errors mapped truthfully.

`httpx-aiohttp` makes the router's provider calls several times faster under concurrency than
httpx's own pool, but its error table turns every aiohttp connection error into
`httpx.ConnectTimeout` (a refused connection would look like a slow host, and a server that
drops a stream mid-body like a connect timeout). This transport maps those errors again from
their aiohttp cause, so the adapters classify a refused or cut connection as a connection
failure and only real timeouts as timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

__all__ = ["FastTransport", "remap", "session_of"]


def remap(error: httpx.TransportError) -> httpx.TransportError:
    """The httpx error that says what happened to the connection behind `error`."""
    cause = error.__cause__
    if isinstance(cause, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return error
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(cause) or type(cause).__name__)
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(str(cause) or "server disconnected")
    if isinstance(cause, aiohttp.ClientConnectionError):
        return httpx.ReadError(str(cause) or type(cause).__name__)
    return error


class _RemappedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except httpx.TransportError as error:
            raise remap(error) from error.__cause__

    async def aclose(self) -> None:
        await self._stream.aclose()


class FastTransport(AiohttpTransport):
    """`AiohttpTransport` whose errors keep their meaning (see the module docstring)."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)

    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session under this transport (created on first use, closed with it)."""
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        return self.client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request`; connection errors stay connection errors."""
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as error:
            raise remap(error) from error.__cause__
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _RemappedStream(response.stream)
        return response


def session_of(client: httpx.AsyncClient) -> aiohttp.ClientSession | None:
    """The aiohttp session under `client` when it runs on `FastTransport`, else None.

    The adapters' shared helpers send through it directly: httpx's request and response
    machinery over the aiohttp transport was a third of the router's CPU per request.
    """
    transport = client._transport
    return transport.session() if isinstance(transport, FastTransport) else None
