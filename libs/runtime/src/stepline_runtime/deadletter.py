"""The dead-letter path: a refused record becomes a `DeadLetter` on `stepline.dlq.v1`."""

from __future__ import annotations

import logging
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import dead_letter_pb2
from stepline_runtime.codec import Cause, type_name
from stepline_runtime.headers import EventHeaders
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.topics import Topics

__all__ = ["dead_letter"]

log = logging.getLogger(__name__)

# Keep the reason readable in a console and well under Kafka's record limit.
_MAX_REASON = 2_000
# A copy of a payload near Kafka's 1 MiB record limit would make the dead letter itself too large
# to produce, and the partition would retry it forever; such payloads stay at their coordinates.
_MAX_PAYLOAD_COPY = 512 * 1024


def dead_letter(
    record: InboundRecord,
    cause: Cause,
    reason: str,
    *,
    consumer: str,
    now: datetime,
    topic: str = Topics.DLQ,
) -> OutboundRecord:
    """The DLQ record for `record`: reason, original coordinates, key, raw bytes and headers."""
    log.warning(
        "record dead-lettered",
        extra={
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "cause": cause.value,
            "reason": reason,
        },
    )
    payload, reason = record.value or b"", reason[:_MAX_REASON]
    if len(payload) > _MAX_PAYLOAD_COPY:
        reason += f" (the {len(payload)}-byte payload is not copied: read it at the source offset)"
        payload = b""
    letter = dead_letter_pb2.DeadLetter(
        reason=reason,
        cause=dead_letter_pb2.DeadLetterCause.Value(f"DEAD_LETTER_CAUSE_{cause.value}"),
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        source_key=record.key or b"",
        payload=payload,
        headers=[dead_letter_pb2.KafkaHeader(key=k, value=v) for k, v in record.headers],
        consumer=consumer,
    )
    stamp = Timestamp()
    stamp.FromDatetime(now)
    letter.dead_lettered_at.CopyFrom(stamp)
    original = EventHeaders.decode(record.headers)
    headers = EventHeaders(
        # Deterministic: a redelivered poison record dead-letters under the same id.
        event_id=f"dlq:{record.topic}:{record.partition}:{record.offset}",
        type_name=type_name(letter),
        source=consumer,
        tenant_id=original.tenant_id,
        time=now,
        traceparent=original.traceparent,
    )
    return OutboundRecord(
        topic=topic,
        key=record.key,
        value=letter.SerializeToString(deterministic=True),
        headers=headers.encode(),
    )
