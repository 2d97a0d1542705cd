"""Key administration shared by `stepline keys` and the console's Keys page.

Both doors list, issue, revoke and rotate through `KeyAdmin`: the checks (a known key, not yet
revoked, at least one valid scope) and the publishing order live here once. A new secret is
returned once, to be shown once; nothing here stores or logs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from enum import StrEnum

from stepline_keys.access import Scope
from stepline_keys.admin import NewKey, issue, revoke, rotate
from stepline_keys.feeds import KeyLog
from stepline_keys.model import Grant, Key, KeyEvent
from stepline_keys.registry import KeyRegistry
from stepline_vocab import SteplineError

__all__ = [
    "KeyAdmin",
    "KeyAdminError",
    "KeyStatus",
    "RevokedKeyError",
    "UnknownKeyError",
    "keys_of",
    "parse_scopes",
    "status_of",
]


class KeyStatus(StrEnum):
    """Whether a key authenticates now."""

    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


def status_of(key: Key, now: datetime) -> KeyStatus:
    """The key's status at `now`."""
    if key.revoked_at is not None:
        return KeyStatus.REVOKED
    return KeyStatus.ACTIVE if key.active(now) else KeyStatus.EXPIRED


class KeyAdminError(SteplineError):
    """A key action that cannot be done; the message says why."""


class UnknownKeyError(KeyAdminError):
    """No key has this id."""


class RevokedKeyError(KeyAdminError):
    """The key was already revoked."""


def parse_scopes(names: Iterable[str]) -> frozenset[Scope]:
    """The scopes `names` spell (blanks ignored); `KeyAdminError` for an unknown or no scope."""
    known = ", ".join(s.value for s in Scope)
    wanted = [n.strip() for n in names if n.strip()]
    unknown = [n for n in wanted if n not in Scope._value2member_map_]
    if unknown:
        raise KeyAdminError(f"unknown scope {unknown[0]!r}: each scope must be one of {known}")
    if not wanted:
        raise KeyAdminError(f"a key needs at least one scope of {known}")
    return frozenset(Scope(n) for n in wanted)


def keys_of(
    registry: KeyRegistry,
    now: datetime,
    *,
    tenant: str | None = None,
    include_inactive: bool = False,
) -> list[Key]:
    """Keys of `tenant` (None: every tenant), by tenant then id; active ones unless asked."""
    return [
        k
        for k in registry.all_keys()
        if (tenant is None or k.tenant_id == tenant) and (include_inactive or k.active(now))
    ]


class KeyAdmin:
    """List, issue, revoke and rotate keys: events go to `log`, then into `registry` at once.

    Folding a published event into the local registry right away lets the caller see its own
    action without waiting for the topic follower; the fold is idempotent, so the follower's
    later copy of the same event changes nothing.
    """

    def __init__(self, registry: KeyRegistry, log: KeyLog, clock: Callable[[], datetime]) -> None:
        self.registry = registry
        self._log = log
        self._clock = clock

    def listing(self, *, tenant: str | None = None, include_inactive: bool = False) -> list[Key]:
        """Keys of `tenant` (None: every tenant), by tenant then id; active ones unless asked."""
        return keys_of(
            self.registry, self._clock(), tenant=tenant, include_inactive=include_inactive
        )

    def known(self, key_id: str) -> Key:
        """The key, not revoked; `UnknownKeyError` / `RevokedKeyError` otherwise."""
        key = self.registry.get(key_id)
        if key is None:
            raise UnknownKeyError(f"no key {key_id}")
        if key.revoked_at is not None:
            raise RevokedKeyError(f"key {key_id} was revoked on {key.revoked_at:%Y-%m-%d %H:%M}")
        return key

    async def _publish(self, *events: KeyEvent) -> None:
        for event in events:
            await self._log.publish(event)
            self.registry.apply(event)

    async def create(self, tenant_id: str, grant: Grant, *, actor: str) -> NewKey:
        """Issue a key for `tenant_id`; its secret is in the result, to be shown once."""
        try:
            new = issue(tenant_id, grant, actor=actor, now=self._clock())
        except ValueError as error:
            raise KeyAdminError(str(error)) from error
        await self._publish(new.event)
        return new

    async def revoke(self, key_id: str, *, actor: str, reason: str = "") -> Key:
        """Revoke a key everywhere (each door folds the event within seconds); the key before."""
        key = self.known(key_id)
        await self._publish(revoke(key.key_id, actor=actor, now=self._clock(), reason=reason))
        return key

    async def rotate(self, key_id: str, *, actor: str) -> tuple[NewKey, Key]:
        """A new key with the grant of `key_id`, which is revoked; the new key and the old one."""
        key = self.known(key_id)
        fresh, revoked = rotate(key, actor=actor, now=self._clock())
        # The new key first: callers never face a moment with neither key valid.
        await self._publish(fresh.event, revoked)
        return fresh, key
