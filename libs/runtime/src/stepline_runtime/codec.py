"""Protobuf codec: one place that turns messages into records and records back into messages."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from stepline_runtime.headers import CONTENT_TYPE_PROTOBUF, EventHeaders, encode_headers
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_vocab import BadInputError

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Cause",
    "Decoded",
    "InvalidRecordError",
    "decode",
    "encode",
    "encode_serialized",
    "type_name",
]

M = TypeVar("M", bound=Message)

# A payload this large is refused before parsing: Kafka's default max.message.bytes is ~1 MiB.
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024


class Cause(StrEnum):
    """Why a record was refused; mirrors `stepline.v1.DeadLetterCause` without the prefix."""

    UNDECODABLE = "UNDECODABLE"
    UNEXPECTED_TYPE = "UNEXPECTED_TYPE"
    INVALID = "INVALID"
    HANDLER_FAILED = "HANDLER_FAILED"
    OVERSIZED = "OVERSIZED"


class InvalidRecordError(BadInputError):
    """A record that cannot become the expected message, with the cause for the DLQ."""

    def __init__(self, cause: Cause, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Decoded(Generic[M]):
    """A decoded message with its headers."""

    message: M
    headers: EventHeaders


def type_name(message_or_class: Message | type[Message]) -> str:
    """The full proto type name, e.g. `stepline.v1.GoalSubmitted`."""
    return message_or_class.DESCRIPTOR.full_name


def encode(
    topic: str,
    key: str,
    message: Message,
    *,
    event_id: str,
    source: str,
    tenant_id: str = "",
    traceparent: str = "",
    time: datetime | None = None,
) -> OutboundRecord:
    """A record carrying `message` with the standard headers."""
    return encode_serialized(
        topic,
        key,
        message.SerializeToString(deterministic=True),
        type_name(message),
        event_id=event_id,
        source=source,
        tenant_id=tenant_id,
        traceparent=traceparent,
        time=time,
    )


def encode_serialized(
    topic: str,
    key: str,
    payload: bytes,
    message_type: str,
    *,
    event_id: str,
    source: str,
    tenant_id: str = "",
    traceparent: str = "",
    time: datetime | None = None,
) -> OutboundRecord:
    """Like `encode`, for a message already serialised (e.g. from cached parts) as `payload`."""
    headers = encode_headers(event_id, message_type, source, tenant_id, time, traceparent)
    return OutboundRecord(topic, key.encode(), payload, headers)


def decode(record: InboundRecord, expected: Iterable[type[M]]) -> Decoded[M]:
    """Decode `record` as one of `expected` (chosen by its `ce_type` header) or raise."""
    by_name = {cls.DESCRIPTOR.full_name: cls for cls in expected}
    headers = EventHeaders.decode(record.headers)
    if record.value is None:
        raise InvalidRecordError(
            Cause.INVALID, "record has no value (tombstone on a non-compacted topic)"
        )
    if len(record.value) > MAX_PAYLOAD_BYTES:
        raise InvalidRecordError(
            Cause.OVERSIZED, f"payload of {len(record.value)} bytes exceeds the limit"
        )
    if headers.content_type and headers.content_type != CONTENT_TYPE_PROTOBUF:
        raise InvalidRecordError(
            Cause.UNEXPECTED_TYPE,
            f"content-type {headers.content_type!r} is not {CONTENT_TYPE_PROTOBUF!r}",
        )
    if headers.type_name:
        cls = by_name.get(headers.type_name)
        if cls is None:
            raise InvalidRecordError(
                Cause.UNEXPECTED_TYPE,
                f"type {headers.type_name!r} is not one of {sorted(by_name)}",
            )
    elif len(by_name) == 1:
        # No type header (e.g. a hand-written producer): the topic admits one type only.
        cls = next(iter(by_name.values()))
    else:
        raise InvalidRecordError(Cause.UNEXPECTED_TYPE, "no ce_type header on a multi-type topic")
    message = cls()
    try:
        message.ParseFromString(record.value)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise InvalidRecordError(
            Cause.UNDECODABLE, f"bytes are not a valid {cls.DESCRIPTOR.full_name}: {error}"
        ) from error
    return Decoded(message, headers)
