"""Record header conventions: CloudEvents Kafka binding (binary mode) plus W3C trace context.

The payload is the protobuf message alone; everything about it travels in headers, so any
consumer can route, dedupe and trace without decoding the body.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import lru_cache

from stepline_runtime.records import Header

__all__ = ["CONTENT_TYPE_PROTOBUF", "EventHeaders", "HeaderName", "encode_headers"]

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
        return encode_headers(
            self.event_id,
            self.type_name,
            self.source,
            self.tenant_id,
            self.time,
            self.traceparent,
            self.tracestate,
            self.content_type,
        )

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


def encode_headers(
    event_id: str,
    type_name: str,
    source: str,
    tenant_id: str = "",
    time: datetime | None = None,
    traceparent: str = "",
    tracestate: str = "",
    content_type: str = CONTENT_TYPE_PROTOBUF,
) -> tuple[Header, ...]:
    """`EventHeaders(...).encode()` without building the `EventHeaders` (the codec's path)."""
    # Written for every record a service produces: no generator, and the values records
    # of one step share (type, source, time, content type) encoded once.
    pairs: list[Header] = [_SPEC_VERSION]
    if event_id:
        pairs.append((HeaderName.ID, event_id.encode()))
    if type_name:
        pairs.append((HeaderName.TYPE, _utf8(type_name)))
    if source:
        pairs.append((HeaderName.SOURCE, _utf8(source)))
    pairs.append((HeaderName.TIME, _time_bytes(time or datetime.now(UTC))))
    if content_type:
        pairs.append((HeaderName.CONTENT_TYPE, _utf8(content_type)))
    if tenant_id:
        pairs.append((HeaderName.TENANT, _utf8(tenant_id)))
    if traceparent:
        pairs.append((HeaderName.TRACEPARENT, traceparent.encode()))
    if tracestate:
        pairs.append((HeaderName.TRACESTATE, tracestate.encode()))
    return tuple(pairs)


_SPEC_VERSION: Header = (HeaderName.SPEC_VERSION, b"1.0")


# Few distinct values (type names, sources, content types, tenants): encode each once.
@lru_cache(maxsize=1024)
def _utf8(text: str) -> bytes:
    return text.encode()


def _time_bytes(time: datetime) -> bytes:
    # Equal instants in other zones (or the other side of a fold) compare equal but print
    # differently: zone and fold are part of the key.
    return _formatted_time(time, time.tzinfo, time.fold)


# The records of one step share their time: format it once.
@lru_cache(maxsize=64)
def _formatted_time(time: datetime, zone: tzinfo | None, fold: int) -> bytes:
    return time.isoformat(timespec="milliseconds").encode()


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
