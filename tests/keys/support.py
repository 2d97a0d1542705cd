"""Keys for tests: a registry holding issued keys, and a channel interceptor that sends one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from stepline_keys import Grant, KeyRegistry, Limits, Scope
from stepline_keys.admin import NewKey, issue
from stepline_keys.grpcdoor import call_metadata

__all__ = ["grant", "new_key", "registry_with", "with_key"]


def grant(
    *scopes: Scope, routes: frozenset[str] = frozenset(), limits: Limits | None = None
) -> Grant:
    """A grant of `scopes` (all scopes but admin when none given)."""
    chosen = scopes or tuple(s for s in Scope if s is not Scope.ADMIN)
    return Grant(frozenset(chosen), routes=routes, limits=limits or Limits())


def new_key(tenant: str, g: Grant | None = None) -> NewKey:
    """A key of `tenant` issued now by "test"."""
    return issue(tenant, g or grant(), actor="test", now=datetime.now(UTC))


def registry_with(*keys: NewKey, clock: Callable[[], datetime] | None = None) -> KeyRegistry:
    """A registry that folded `keys`."""
    return KeyRegistry(clock or (lambda: datetime.now(UTC)), [k.event for k in keys])


def _with(details: grpc.aio.ClientCallDetails, secret: str) -> grpc.aio.ClientCallDetails:
    metadata = [*(details.metadata or ()), *call_metadata(secret)]
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


class _UnaryKey(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, secret: str) -> None:
        self._secret = secret

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """Add the key to a unary call."""
        return await continuation(_with(details, self._secret), request)


class _StreamKey(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, secret: str) -> None:
        self._secret = secret

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        """Add the key to a server-streaming call."""
        return await continuation(_with(details, self._secret), request)


def with_key(secret: str) -> list[grpc.aio.ClientInterceptor]:
    """Channel interceptors sending `authorization: Bearer <secret>` with every call.

    Two objects: a channel files each interceptor under the first call kind it implements.
    """
    return [_UnaryKey(secret), _StreamKey(secret)]
