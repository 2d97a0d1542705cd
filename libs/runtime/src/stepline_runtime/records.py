"""Plain record types that cross the Kafka boundary, free of any client library."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Header", "InboundRecord", "OutboundRecord"]

Header = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """A record as consumed: payload bytes plus where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()
    timestamp_ms: int = 0

    def header(self, name: str) -> str | None:
        """The last value of header `name` decoded as UTF-8, or None."""
        for key, value in reversed(self.headers):
            if key == name:
                return value.decode("utf-8", errors="replace")
        return None


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    """A record to produce; `value=None` is a tombstone on a compacted topic."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = field(default=())
    partition: int | None = None
