"""A record as large as the broker accepts must still fit in its dead letter (else: stalled)."""

from __future__ import annotations

from datetime import UTC, datetime

from stepline.v1 import dead_letter_pb2
from stepline_runtime.codec import Cause
from stepline_runtime.deadletter import dead_letter
from stepline_runtime.records import InboundRecord

# aiokafka's default `max_request_size`; the broker's `message.max.bytes` is 12 bytes more.
PRODUCER_LIMIT = 1_048_576


def test_dead_letter_of_a_near_1_mib_record_fits_in_a_kafka_record() -> None:
    headers = (("ce_type", b"stepline.v1.GoalSubmitted"), ("ce_id", b"x" * 64))
    record = InboundRecord(
        topic="ns.stepline.goals.v1",
        partition=2,
        offset=41,
        key=b"run-1",
        value=b"\xff" * 1_048_200,  # accepted by the broker, not a GoalSubmitted
        headers=headers,
    )
    out = dead_letter(
        record,
        Cause.UNDECODABLE,
        "bytes are not a valid GoalSubmitted",
        consumer="c",
        now=datetime.now(UTC),
    )
    size = (
        len(out.value or b"") + len(out.key or b"") + sum(len(k) + len(v) for k, v in out.headers)
    )
    assert size < PRODUCER_LIMIT - 1024
    letter = dead_letter_pb2.DeadLetter.FromString(out.value or b"")
    # Still findable: the coordinates of the original, which keeps the bytes.
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "ns.stepline.goals.v1",
        2,
        41,
    )
    assert "1048200-byte payload is not copied" in letter.reason


def test_dead_letter_of_a_small_record_keeps_its_bytes() -> None:
    record = InboundRecord(
        topic="t", partition=0, offset=0, key=b"k", value=b"\x08\xff", headers=()
    )
    out = dead_letter(record, Cause.UNDECODABLE, "bad", consumer="c", now=datetime.now(UTC))
    assert dead_letter_pb2.DeadLetter.FromString(out.value or b"").payload == b"\x08\xff"
