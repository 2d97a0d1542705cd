"""What every HTTP adapter does alike: build one request, POST it or stream it, parse the answer.

An adapter subclasses `HttpAdapter` and keeps only its wire format: where a request goes and
what it carries (`_request`), how an answer reads (`parse`), how a stream reads
(`chunk_parser`), and, where its provider differs, its error taxonomy (`errors`) and stream
framing (`frames`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx

from stepline_router.providers.base import AttemptLimits
from stepline_router.providers.http import (
    Body,
    ChunkParser,
    ErrorMapper,
    FramesFn,
    NowFn,
    error_from_response,
    iter_sse,
    post_json,
    sse_deltas,
)
from stepline_router.providers.images import inline_images
from stepline_router.routes import Deployment
from stepline_router.stream import Delta
from stepline_router.types import Completion, ModelRequest

__all__ = ["HttpAdapter", "request_headers"]


def request_headers(
    deployment: Deployment,
    credential: str | None,
    name: str = "authorization",
    scheme: str = "Bearer ",
    *,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """JSON headers: `fixed` ones, the deployment's own over them, the credential last."""
    headers = {"content-type": "application/json", **(fixed or {}), **deployment.headers}
    if credential:
        headers[name] = scheme + credential
    return headers


class HttpAdapter(ABC):
    """One attempt over HTTP, non-streamed or streamed; subclasses supply the wire format."""

    # Whether a trailing assistant turn is continued (prefill); see `Provider`.
    continues_answers = False
    # What a non-2xx answer means; a provider with its own error details maps them itself.
    errors: ErrorMapper = staticmethod(error_from_response)
    # How a 2xx stream is framed (server-sent events unless the provider says otherwise).
    frames: FramesFn = staticmethod(iter_sse)
    # Image inputs (`Message.images`) are sent: every HTTP wire format here carries them
    # (routing treats a vision deployment whose adapter lacks this as blind).
    sends_images = True
    # Whether some image references must be fetched and sent as bytes (see `needs_bytes`).
    fetches_images = False

    def __init__(
        self, client: httpx.AsyncClient, now: NowFn, *, private_images: bool = False
    ) -> None:
        self._client = client
        self._now = now
        # Whether images may be fetched from non-public addresses (see `images`).
        self._private_images = private_images

    def needs_bytes(self, ref: str) -> bool:
        """Whether image `ref` (a URL; data URIs are bytes already) must be fetched first."""
        return False

    async def _with_images(self, request: ModelRequest, limits: AttemptLimits) -> ModelRequest:
        if not any(m.images for m in request.messages):
            return request
        return await inline_images(
            self._client, request, limits, self.needs_bytes, allow_private=self._private_images
        )

    @abstractmethod
    def _request(
        self, deployment: Deployment, request: ModelRequest, credential: str | None, stream: bool
    ) -> tuple[str, dict[str, str], Body]:
        """URL, headers and body of one attempt."""

    @abstractmethod
    def parse(self, data: Any, status: int, request: ModelRequest) -> Completion:
        """The answer of a non-streamed response body."""

    @abstractmethod
    def chunk_parser(self, request: ModelRequest) -> ChunkParser:
        """A fresh parser for one streamed response."""

    def _stream_ended(self, parser: ChunkParser) -> None:
        """Called once a stream stops, however it stopped (nothing to do by default)."""
        return None

    async def complete(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """One attempt against `deployment`, not streamed (the router streams with `stream`)."""
        if self.fetches_images:
            request = await self._with_images(request, limits)
        url, headers, body = self._request(deployment, request, credential, stream=False)
        data, status = await post_json(
            self._client, url, headers, body, limits, self._now(), errors=self.errors
        )
        return self.parse(data, status, request)

    async def stream(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> AsyncGenerator[Delta, None]:
        """One streamed attempt against `deployment`."""
        if self.fetches_images:
            request = await self._with_images(request, limits)
        url, headers, body = self._request(deployment, request, credential, stream=True)
        parser = self.chunk_parser(request)
        try:
            async for delta in sse_deltas(
                self._client,
                url,
                headers,
                body,
                limits,
                self._now,
                parser,
                errors=self.errors,
                frames=self.frames,
            ):
                yield delta
        finally:
            self._stream_ended(parser)
