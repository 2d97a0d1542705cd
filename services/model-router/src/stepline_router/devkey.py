"""The router's own keys port adapters for local use: one dev key, or nobody at all.

A gateway must never be an open proxy: without a configured key every call is refused with 401.
The key registry of `stepline_keys` replaces these in production.
"""

from __future__ import annotations

import hmac
from decimal import Decimal

from stepline_keys import Principal, Reservation, Scope, UnauthenticatedError

__all__ = ["DevKeyAuthenticator", "UnmeteredQuotas"]


class DevKeyAuthenticator:
    """Accepts exactly one key (STEPLINE_DEV_API_KEY) for one tenant; refuses all without it."""

    def __init__(self, secret: str | None, tenant_id: str) -> None:
        self._secret = secret or None
        self._principal = Principal(
            key_id="dev", tenant_id=tenant_id, scopes=frozenset({Scope.MODELS_CALL}), label="dev"
        )

    def authenticate(self, secret: str | None) -> Principal:
        """The dev principal for the dev key; `UnauthenticatedError` for anything else."""
        if self._secret is None:
            raise UnauthenticatedError(
                "no API keys are configured on this router (set STEPLINE_DEV_API_KEY for local use)"
            )
        if not secret:
            raise UnauthenticatedError("missing API key (Authorization: Bearer … or x-api-key)")
        # Constant-time: the comparison must not leak how much of a guess was right.
        if not hmac.compare_digest(secret.encode(), self._secret.encode()):
            raise UnauthenticatedError("invalid API key")
        return self._principal


class _Settled:
    async def settle(self, *, cost: Decimal, tokens: int) -> None:
        return None


class UnmeteredQuotas:
    """No request, token or spend limits: for the single dev key only."""

    async def reserve(self, principal: Principal, *, cost: Decimal, tokens: int) -> Reservation:
        """Always admits."""
        return _Settled()
