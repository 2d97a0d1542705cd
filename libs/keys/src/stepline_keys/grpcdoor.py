"""Authentication for every gRPC front door: `authorization: Bearer sk-stl-…` metadata.

`RequireKey` (a server interceptor) refuses any call without a valid key before it reaches a
servicer, so a method nobody remembered to guard is still closed; `authorize` inside each method
yields the principal, checks the scope and the peer (the loopback-only bootstrap key), and
`abort_for` maps the auth errors to UNAUTHENTICATED / PERMISSION_DENIED / RESOURCE_EXHAUSTED
(with a `retry-after` trailer in seconds). Clients send `call_metadata(secret)`.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from typing import Any, NoReturn, TypeAlias

import grpc

from stepline_keys.access import (
    Authenticator,
    AuthError,
    Principal,
    RateLimitedError,
    Scope,
    UnauthenticatedError,
    is_loopback_host,
    require_origin,
)

__all__ = [
    "METADATA_KEY",
    "RequireKey",
    "abort_for",
    "authorize",
    "bearer",
    "call_metadata",
    "is_loopback_peer",
    "status_of",
]

METADATA_KEY = "authorization"
_BEARER = "bearer "
_HEALTH = "grpc.health.v1.Health"

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Metadata: TypeAlias = "Iterable[tuple[str, str | bytes]] | None"


def call_metadata(secret: str) -> tuple[tuple[str, str], ...]:
    """Metadata a client sends to prove `secret`."""
    return ((METADATA_KEY, f"Bearer {secret}"),)


def bearer(metadata: _Metadata) -> str | None:
    """The secret of an `authorization: Bearer …` entry, or None."""
    for name, value in metadata or ():
        if name.lower() == METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            if text.lower().startswith(_BEARER):
                return text[len(_BEARER) :].strip() or None
    return None


def is_loopback_peer(peer: str) -> bool:
    """True for grpc peers `ipv4:127.x.x.x:port`, `ipv6:[::1]:port` and unix sockets."""
    if peer.startswith("unix:"):
        return True
    kind, _, rest = peer.partition(":")
    return kind in ("ipv4", "ipv6") and is_loopback_host(rest.rsplit(":", 1)[0])


def status_of(error: AuthError) -> grpc.StatusCode:
    """The gRPC status of an auth error."""
    if isinstance(error, UnauthenticatedError):
        return grpc.StatusCode.UNAUTHENTICATED
    if isinstance(error, RateLimitedError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.PERMISSION_DENIED


async def abort_for(context: _Context, error: AuthError) -> NoReturn:
    """End the call with the status (and `retry-after` trailer) of `error`."""
    if isinstance(error, RateLimitedError):
        context.set_trailing_metadata(
            (
                ("retry-after", str(max(1, math.ceil(error.retry_after_s)))),
                ("x-stepline-limit", error.limit),
            )
        )
    await context.abort(status_of(error), str(error))
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def _principal(authenticator: Authenticator, metadata: _Metadata, peer: str) -> Principal:
    principal = authenticator.authenticate(bearer(metadata))
    return require_origin(principal, loopback=is_loopback_peer(peer))


async def authorize(
    context: _Context, authenticator: Authenticator, scope: Scope | None = None
) -> Principal:
    """The caller's principal holding `scope`; aborts the call otherwise."""
    try:
        principal = _principal(authenticator, context.invocation_metadata(), context.peer())
        if scope is not None:
            principal.require(scope)
        return principal
    except AuthError as error:
        await abort_for(context, error)


def _denied(handler: _Handler, error: AuthError) -> _Handler:
    """A handler of the same shape as `handler` that only refuses the call."""

    async def unary(request: Any, context: _Context) -> Any:
        await abort_for(context, error)

    async def streaming(request: Any, context: _Context) -> AsyncIterator[Any]:
        await abort_for(context, error)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)


class RequireKey(grpc.aio.ServerInterceptor):
    """Refuses every call without a valid key, except to the `open` services (health)."""

    def __init__(self, authenticator: Authenticator, open: Collection[str] = (_HEALTH,)) -> None:
        self._authenticator = authenticator
        self._open = frozenset(open)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        """Pass a call with a valid key on; answer any other with UNAUTHENTICATED."""
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").split("/", 1)[0]
        if handler is None or service in self._open:
            return handler
        try:
            # The peer is not known here; `authorize` in the method checks loopback-only keys.
            self._authenticator.authenticate(bearer(handler_call_details.invocation_metadata))
        except AuthError as error:
            return _denied(handler, error)
        return handler
