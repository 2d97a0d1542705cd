"""In-memory twin of the keys ports (`Authenticator`, `Quotas`) for the gateway tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from stepline_keys import (
    Principal,
    RateLimitedError,
    Reservation,
    Scope,
    UnauthenticatedError,
)

__all__ = ["MemoryKeys", "MemoryQuotas", "keys_from_json"]


class MemoryKeys:
    """Keys by secret; anything else is unauthenticated."""

    def __init__(self, principals: Mapping[str, Principal]) -> None:
        self._principals = dict(principals)

    def authenticate(self, secret: str | None) -> Principal:
        """The principal of `secret`."""
        if not secret:
            raise UnauthenticatedError("missing API key")
        principal = self._principals.get(secret)
        if principal is None:
            raise UnauthenticatedError("invalid API key")
        return principal


@dataclass
class _Held:
    quotas: MemoryQuotas
    key_id: str
    cost: Decimal
    tokens: int

    async def settle(self, *, cost: Decimal, tokens: int) -> None:
        self.quotas.settled.append((self.key_id, cost, tokens))


@dataclass
class MemoryQuotas:
    """A number of requests per key (then 429 with Retry-After); every hold and settle kept."""

    requests: Mapping[str, int] = field(default_factory=dict)
    retry_after_s: float = 7.0
    used: dict[str, int] = field(default_factory=dict)
    reserved: list[tuple[str, Decimal, int]] = field(default_factory=list)
    settled: list[tuple[str, Decimal, int]] = field(default_factory=list)

    async def reserve(self, principal: Principal, *, cost: Decimal, tokens: int) -> Reservation:
        """Hold one request unless the key's requests are used up."""
        limit = self.requests.get(principal.key_id)
        used = self.used.get(principal.key_id, 0)
        if limit is not None and used >= limit:
            raise RateLimitedError(
                f"key {principal.key_id} used its {limit} requests",
                limit="requests",
                retry_after_s=self.retry_after_s,
            )
        self.used[principal.key_id] = used + 1
        self.reserved.append((principal.key_id, cost, tokens))
        return _Held(self, principal.key_id, cost, tokens)


def keys_from_json(text: str) -> tuple[MemoryKeys, MemoryQuotas]:
    """Both twins from `[{"secret", "key_id", "tenant", "scopes", "routes", "models",
    "requests"}]` (how a test hands keys to a router subprocess)."""
    entries: list[dict[str, Any]] = json.loads(text)
    principals = {
        e["secret"]: Principal(
            key_id=e["key_id"],
            tenant_id=e["tenant"],
            scopes=frozenset(Scope(s) for s in e.get("scopes", ["models:call"])),
            routes=frozenset(e.get("routes", ())),
            models=frozenset(e.get("models", ())),
        )
        for e in entries
    }
    limits = {e["key_id"]: int(e["requests"]) for e in entries if "requests" in e}
    return MemoryKeys(principals), MemoryQuotas(limits)
