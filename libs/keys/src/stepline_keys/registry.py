"""The in-memory key registry every front door folds from `stepline.keys.v1`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from stepline_keys.access import Principal, UnauthenticatedError
from stepline_keys.model import Key, KeyEvent, Limits, fold
from stepline_keys.secret import key_id_of, secret_matches

__all__ = ["KeyRegistry"]

# One text for every refusal, so an answer never tells a caller which keys exist.
_REFUSED = "missing, unknown, expired or revoked API key"


class KeyRegistry:
    """Authenticator over the folded key events; `clock` decides expiry."""

    def __init__(self, clock: Callable[[], datetime], events: Iterable[KeyEvent] = ()) -> None:
        self._clock = clock
        self._keys: dict[str, Key] = {}
        self.applied = 0
        for event in events:
            self.apply(event)

    def apply(self, event: KeyEvent) -> None:
        """Fold one event into the view."""
        folded = fold(self._keys.get(event.key_id), event)
        if folded is not None:
            self._keys[event.key_id] = folded
        self.applied += 1

    def forget(self, key_id: str) -> None:
        """Drop a key whose record was deleted (a tombstone on the compacted topic)."""
        self._keys.pop(key_id, None)

    def authenticate(self, secret: str | None) -> Principal:
        """The key's principal; `UnauthenticatedError` if missing, unknown, expired or revoked."""
        key_id = key_id_of(secret) if secret else None
        key = self._keys.get(key_id) if key_id else None
        # The key id is public, so a dict miss leaks nothing; the hash compare is constant-time.
        if key is None or secret is None or not secret_matches(secret, key.secret_hash):
            raise UnauthenticatedError(_REFUSED)
        if not key.active(self._clock()):
            raise UnauthenticatedError(_REFUSED)
        return key.principal()

    def get(self, key_id: str) -> Key | None:
        """A key's state (revoked and expired ones included)."""
        return self._keys.get(key_id)

    def all_keys(self) -> list[Key]:
        """Every key, by tenant then id."""
        return sorted(self._keys.values(), key=lambda k: (k.tenant_id, k.key_id))

    def limits(self, key_id: str) -> Limits:
        """The key's quotas (no limits for an unknown key: it cannot authenticate anyway)."""
        key = self._keys.get(key_id)
        return key.grant.limits if key is not None else Limits()
