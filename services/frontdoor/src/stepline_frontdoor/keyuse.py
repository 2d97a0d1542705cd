"""When each key was last accepted by this front door (console, JSON API and gRPC alike).

The key registry knows who holds a key, not when it was used: usage records carry no key id.
This door sees every call it authenticates, so it can tell the Keys page when a key was last
accepted here since the process started; other doors' use is not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from stepline_keys import Authenticator, Principal

__all__ = ["LastUse"]


class LastUse:
    """An `Authenticator` that remembers, per key id, when it last authenticated a caller."""

    def __init__(self, inner: Authenticator, clock: Callable[[], datetime]) -> None:
        self._inner = inner
        self._clock = clock
        self._seen: dict[str, datetime] = {}

    def authenticate(self, secret: str | None) -> Principal:
        """The inner authenticator's principal; a success is noted with the time."""
        principal = self._inner.authenticate(secret)
        self._seen[principal.key_id] = self._clock()
        return principal

    def last_used(self, key_id: str) -> datetime | None:
        """When the key was last accepted here, or None."""
        return self._seen.get(key_id)
