"""Admin actions as pure functions: each returns the event(s) to publish (and a new secret)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from stepline_keys.model import Grant, Key, KeyEvent, KeyIssued, KeyRevoked, KeyUpdated
from stepline_keys.secret import hash_secret, new_key_id, new_secret

__all__ = ["NewKey", "issue", "revoke", "rotate", "update"]


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly issued key: the event to publish and the secret to show once."""

    key_id: str
    secret: str
    event: KeyEvent

    def __repr__(self) -> str:
        return f"NewKey(key_id={self.key_id!r}, secret=<hidden>)"


def issue(
    tenant_id: str,
    grant: Grant,
    *,
    actor: str,
    now: datetime,
    loopback_only: bool = False,
    rotated_from: str = "",
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> NewKey:
    """A new key for `tenant_id` with `grant`."""
    if not tenant_id:
        raise ValueError("a key needs a tenant")
    if not grant.scopes:
        raise ValueError("a key needs at least one scope")
    key_id = new_key_id(random_bytes)
    secret = new_secret(key_id, random_bytes)
    change = KeyIssued(tenant_id, hash_secret(secret), grant, loopback_only, rotated_from)
    return NewKey(key_id, secret, KeyEvent(key_id, actor, now, change))


def update(key: Key, grant: Grant, *, actor: str, now: datetime) -> KeyEvent:
    """Replace `key`'s grant."""
    return KeyEvent(key.key_id, actor, now, KeyUpdated(grant))


def revoke(key_id: str, *, actor: str, now: datetime, reason: str = "") -> KeyEvent:
    """Revoke a key."""
    return KeyEvent(key_id, actor, now, KeyRevoked(reason))


def rotate(
    key: Key,
    *,
    actor: str,
    now: datetime,
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> tuple[NewKey, KeyEvent]:
    """A new key with `key`'s tenant and grant, and the revocation of `key` (publish in order)."""
    fresh = issue(
        key.tenant_id,
        key.grant,
        actor=actor,
        now=now,
        loopback_only=key.loopback_only,
        rotated_from=key.key_id,
        random_bytes=random_bytes,
    )
    return fresh, revoke(key.key_id, actor=actor, now=now, reason=f"rotated to {fresh.key_id}")
