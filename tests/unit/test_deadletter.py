"""Dead letters keep everything needed to inspect and replay the refused record."""

from __future__ import annotations

from datetime import UTC, datetime

from stepline.v1 import dead_letter_pb2
from stepline_runtime.codec import Cause
from stepline_runtime.deadletter import dead_letter
from stepline_runtime.headers import EventHeaders
from stepline_runtime.records import InboundRecord
from stepline_runtime.topics import Topics

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)


def test_dead_letter_carries_reason_coordinates_and_raw_bytes() -> None:
    record = InboundRecord(
        topic=Topics.GOALS,
        partition=2,
        offset=41,
        key=b"run-9",
        value=b"\x08\xff garbage",
        headers=(("ce_tenant", b"acme"), ("x-custom", b"\x00\x01")),
    )

    out = dead_letter(record, Cause.UNDECODABLE, "not a GoalSubmitted", consumer="planner", now=NOW)

    assert out.topic == Topics.DLQ
    assert out.key == b"run-9"
    letter = dead_letter_pb2.DeadLetter.FromString(out.value or b"")
    assert letter.reason == "not a GoalSubmitted"
    assert letter.cause == dead_letter_pb2.DEAD_LETTER_CAUSE_UNDECODABLE
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        Topics.GOALS,
        2,
        41,
    )
    assert letter.payload == b"\x08\xff garbage"
    assert [(h.key, h.value) for h in letter.headers] == list(record.headers)
    assert letter.consumer == "planner"
    assert letter.dead_lettered_at.ToDatetime(UTC) == NOW
    headers = EventHeaders.decode(out.headers)
    assert headers.type_name == "stepline.v1.DeadLetter"
    assert headers.tenant_id == "acme"
    assert headers.event_id == f"dlq:{Topics.GOALS}:2:41"


def test_every_cause_maps_to_a_proto_enum_value() -> None:
    record = InboundRecord(topic="t", partition=0, offset=0, key=None, value=None)
    for cause in Cause:
        out = dead_letter(record, cause, "r", consumer="c", now=NOW)
        letter = dead_letter_pb2.DeadLetter.FromString(out.value or b"")
        assert dead_letter_pb2.DeadLetterCause.Name(letter.cause).endswith(cause.value)
