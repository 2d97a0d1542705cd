"""The outbound port every provider adapter implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from stepline_router.routes import Deployment
from stepline_router.stream import Delta
from stepline_router.types import Completion, ModelRequest

__all__ = ["AttemptLimits", "Embedder", "Provider"]


@dataclass(frozen=True, slots=True)
class AttemptLimits:
    """Timeouts of one attempt in seconds, already clipped to the call's remaining deadline."""

    connect_s: float
    first_byte_s: float
    total_s: float


class Provider(Protocol):
    """Sends one request to one deployment; raises `ProviderError` with a classified outcome.

    `stream` yields deltas as they arrive and ends only after the provider's own end-of-stream
    marker; a cut, malformed or erroring stream raises `ProviderError` instead of ending.
    It holds no total timeout across its yields: the router bounds each step of the stream.
    `continues_answers`: a trailing assistant message is continued (prefill), so this provider
    can finish an answer another deployment began.
    """

    continues_answers: bool

    async def complete(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """One attempt: the answer, or `ProviderError`."""
        ...

    def stream(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> AsyncGenerator[Delta, None]:
        """One streamed attempt: deltas, or `ProviderError` at any point."""
        ...


@runtime_checkable
class Embedder(Protocol):
    """A provider that also serves embeddings calls (`ModelRequest.embedding` is set).

    Apart from `Provider` so adapters without embeddings need nothing: a deployment that
    declares embeddings on a provider without this method is skipped as unavailable.
    """

    async def embed(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """One attempt: a `Completion` whose `embeddings` hold one vector per input, in order
        (input tokens counted, output 0), or `ProviderError`."""
        ...
