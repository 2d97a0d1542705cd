"""Keys as events: the admin actions and the pure fold that turns them into a key's state."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import assert_never

from stepline_keys.access import Principal, Scope

__all__ = [
    "Grant",
    "Key",
    "KeyChange",
    "KeyEvent",
    "KeyIssued",
    "KeyRevoked",
    "KeyUpdated",
    "Limits",
    "fold",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Quotas of a key (or a tenant); None means no limit. Amounts in the price book currency."""

    daily_spend: Decimal | None = None
    monthly_spend: Decimal | None = None
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """What a key may do; empty allow-lists mean any agent, route or model."""

    scopes: frozenset[Scope]
    agents: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    limits: Limits = field(default_factory=Limits)
    expires_at: datetime | None = None
    label: str = ""


@dataclass(frozen=True, slots=True)
class KeyIssued:
    """A key was created with this hash (never the secret) for this tenant."""

    tenant_id: str
    secret_hash: str
    grant: Grant
    loopback_only: bool = False
    rotated_from: str = ""


@dataclass(frozen=True, slots=True)
class KeyUpdated:
    """A key's grant was replaced."""

    grant: Grant


@dataclass(frozen=True, slots=True)
class KeyRevoked:
    """A key was revoked."""

    reason: str = ""


KeyChange = KeyIssued | KeyUpdated | KeyRevoked


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """One admin action on one key: who, when, what."""

    key_id: str
    actor: str
    occurred_at: datetime
    change: KeyChange


@dataclass(frozen=True, slots=True)
class Key:
    """A key's current state, folded from its events."""

    key_id: str
    tenant_id: str
    secret_hash: str
    grant: Grant
    issued_at: datetime
    issued_by: str
    loopback_only: bool = False
    rotated_from: str = ""
    updated_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str = ""

    def active(self, now: datetime) -> bool:
        """Not revoked and not expired at `now`."""
        expires = self.grant.expires_at
        return self.revoked_at is None and (expires is None or now < expires)

    def principal(self) -> Principal:
        """The caller this key proves."""
        g = self.grant
        return Principal(
            key_id=self.key_id,
            tenant_id=self.tenant_id,
            scopes=g.scopes,
            routes=g.routes,
            models=g.models,
            agents=g.agents,
            label=g.label,
            loopback_only=self.loopback_only,
        )


def fold(key: Key | None, event: KeyEvent) -> Key | None:
    """The key after `event`; events for an unknown key (other than issued) change nothing."""
    change = event.change
    if isinstance(change, KeyIssued):
        if key is not None:
            return key  # an id is issued once; a replayed or forged re-issue changes nothing
        return Key(
            key_id=event.key_id,
            tenant_id=change.tenant_id,
            secret_hash=change.secret_hash,
            grant=change.grant,
            issued_at=event.occurred_at,
            issued_by=event.actor,
            loopback_only=change.loopback_only,
            rotated_from=change.rotated_from,
        )
    if key is None:
        return None
    if isinstance(change, KeyUpdated):
        if key.revoked_at is not None:
            return key  # a revoked key stays revoked
        return replace(key, grant=change.grant, updated_at=event.occurred_at)
    if isinstance(change, KeyRevoked):
        if key.revoked_at is not None:
            return key
        return replace(key, revoked_at=event.occurred_at, revoked_by=event.actor)
    assert_never(change)
