"""What every front door needs from the key registry: principals, scopes, errors and ports."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

from stepline_vocab import SteplineError

__all__ = [
    "AuthError",
    "Authenticator",
    "PermissionDeniedError",
    "Principal",
    "Quotas",
    "RateLimitedError",
    "Reservation",
    "Scope",
    "UnauthenticatedError",
    "is_loopback_host",
    "require_origin",
]


class Scope(StrEnum):
    """What a key may do."""

    GOALS_SUBMIT = "goals:submit"
    RUNS_READ = "runs:read"
    APPROVALS_DECIDE = "approvals:decide"
    MODELS_CALL = "models:call"
    USAGE_READ = "usage:read"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a valid key proves: its tenant, scopes and allow-lists (empty means any)."""

    key_id: str
    tenant_id: str
    scopes: frozenset[Scope]
    routes: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()
    label: str = ""
    # The development key `stepline up` creates: doors accept it only from loopback peers, and
    # like a local superuser it may act for any tenant a call names (its own by default).
    loopback_only: bool = False

    def has(self, scope: Scope) -> bool:
        """True when the key holds `scope` (or `admin`, which holds every scope)."""
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def may_use_route(self, route: str) -> bool:
        """True when the key is not limited to other routes."""
        return not self.routes or route in self.routes

    def may_use_model(self, model: str) -> bool:
        """True when the key is not limited to other models (deployments)."""
        return not self.models or model in self.models

    def may_use_agent(self, agent: str) -> bool:
        """True when the key is not limited to other agents."""
        return not self.agents or agent in self.agents

    def require(self, scope: Scope) -> None:
        """`PermissionDeniedError` unless the key holds `scope`."""
        if not self.has(scope):
            raise PermissionDeniedError(f"this API key lacks the scope {scope.value!r}")

    def tenant_for(self, requested: str) -> str:
        """The tenant a call acts for: the key's; naming another one is `PermissionDeniedError`
        (except for the loopback-only development key)."""
        if requested and requested != self.tenant_id:
            if self.loopback_only:
                return requested
            raise PermissionDeniedError("this API key may not act for the tenant the call names")
        return self.tenant_id

    def may_see(self, tenant_id: str) -> bool:
        """True when an object of `tenant_id` is visible to this key."""
        return tenant_id == self.tenant_id or self.loopback_only


class AuthError(SteplineError):
    """Root of the errors a front door maps to its protocol's status codes."""


class UnauthenticatedError(AuthError):
    """Missing, unknown, expired or revoked key: gRPC UNAUTHENTICATED, HTTP 401."""


class PermissionDeniedError(AuthError):
    """A valid key without the scope or reaching for another tenant: PERMISSION_DENIED, HTTP 403."""


class RateLimitedError(AuthError):
    """A limit of the key or tenant is exhausted: RESOURCE_EXHAUSTED, HTTP 429 with Retry-After."""

    def __init__(self, message: str, *, limit: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s


class Authenticator(Protocol):
    """Turns a presented secret into the principal it proves."""

    def authenticate(self, secret: str | None) -> Principal:
        """The key's principal; `UnauthenticatedError` if missing, unknown, expired or revoked."""
        ...


class Reservation(Protocol):
    """Spend and tokens held for one call until its real cost is known."""

    async def settle(self, *, cost: Decimal, tokens: int) -> None:
        """Replace the held amounts by the real ones (release what was not used)."""
        ...


class Quotas(Protocol):
    """Requests, tokens and spend per key and tenant, reserved before a call and settled after."""

    async def reserve(self, principal: Principal, *, cost: Decimal, tokens: int) -> Reservation:
        """Hold one request, `tokens` and the worst-case `cost`; `RateLimitedError` when over."""
        ...


def is_loopback_host(host: str | None) -> bool:
    """True for a loopback IP address (127.0.0.0/8, ::1); False for names and None."""
    try:
        return host is not None and ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_origin(principal: Principal, *, loopback: bool) -> Principal:
    """`principal`, unless it is the loopback-only development key calling from another host."""
    if principal.loopback_only and not loopback:
        raise UnauthenticatedError("the bootstrap API key is accepted from this host only")
    return principal
