"""Record header conventions: CloudEvents Kafka binding (binary mode) plus W3C trace context.

The payload is the protobuf message alone; everything about it travels in headers, so any
consumer can route, dedupe and trace without decoding the body.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from stepline_runtime.records import Header

__all__ = ["CONTENT_TYPE_PROTOBUF", "EventHeaders", "HeaderName"]

CONTENT_TYPE_PROTOBUF = "application/x-protobuf"


class HeaderName:
    """Header names; `ce_*` follow the CloudEvents Kafka protocol binding."""

    SPEC_VERSION = "ce_specversion"
    ID = "ce_id"
    TYPE = "ce_type"
    SOURCE = "ce_source"
    TIME = "ce_time"
    TENANT = "ce_tenant"
    CONTENT_TYPE = "content-type"
    TRACEPARENT = "traceparent"
    TRACESTATE = "tracestate"


@dataclass(frozen=True, slots=True)
class EventHeaders:
    """The metadata every Stepline record carries."""

    event_id: str
    type_name: str
    source: str
    tenant_id: str = ""
    time: datetime | None = None
    traceparent: str = ""
    tracestate: str = ""
    content_type: str = CONTENT_TYPE_PROTOBUF

    def encode(self) -> tuple[Header, ...]:
        """Kafka headers, omitting empty optional fields."""
        time = (self.time or datetime.now(UTC)).isoformat(timespec="milliseconds")
        pairs = [
            (HeaderName.SPEC_VERSION, "1.0"),
            (HeaderName.ID, self.event_id),
            (HeaderName.TYPE, self.type_name),
            (HeaderName.SOURCE, self.source),
            (HeaderName.TIME, time),
            (HeaderName.CONTENT_TYPE, self.content_type),
            (HeaderName.TENANT, self.tenant_id),
            (HeaderName.TRACEPARENT, self.traceparent),
            (HeaderName.TRACESTATE, self.tracestate),
        ]
        return tuple((name, value.encode()) for name, value in pairs if value)

    @classmethod
    def decode(cls, headers: Iterable[Header]) -> EventHeaders:
        """Parse headers; missing ones become empty strings (validation is the codec's job)."""
        found: dict[str, str] = {}
        for key, raw in headers:
            found[key] = raw.decode("utf-8", errors="replace") if raw is not None else ""
        time = found.get(HeaderName.TIME)
        return cls(
            event_id=found.get(HeaderName.ID, ""),
            type_name=found.get(HeaderName.TYPE, ""),
            source=found.get(HeaderName.SOURCE, ""),
            tenant_id=found.get(HeaderName.TENANT, ""),
            time=_parse_time(time) if time else None,
            traceparent=found.get(HeaderName.TRACEPARENT, ""),
            tracestate=found.get(HeaderName.TRACESTATE, ""),
            content_type=found.get(HeaderName.CONTENT_TYPE, ""),
        )


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
