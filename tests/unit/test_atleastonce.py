"""At-least-once processing logic: outputs before ack, retries, and the dead-letter escape hatch."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from stepline.v1 import dead_letter_pb2
from stepline_runtime.atleastonce import AtLeastOnce, InMemoryPublisher, RedeliverError
from stepline_runtime.codec import Cause, InvalidRecordError
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.topics import Topics

RECORD = InboundRecord(topic="in", partition=1, offset=5, key=b"k", value=b"v")


async def echo(record: InboundRecord) -> Sequence[OutboundRecord]:
    return [OutboundRecord(topic="out", key=record.key, value=record.value)]


def _letters(publisher: InMemoryPublisher) -> list[dead_letter_pb2.DeadLetter]:
    return [
        dead_letter_pb2.DeadLetter.FromString(r.value or b"")
        for r in publisher.records
        if r.topic == Topics.DLQ
    ]


async def test_outputs_are_published_before_returning() -> None:
    publisher = InMemoryPublisher()
    await AtLeastOnce("svc", echo, publisher, backoff_s=0)(RECORD)
    assert publisher.records == [OutboundRecord(topic="out", key=b"k", value=b"v")]


async def test_refused_record_goes_to_the_dead_letter_topic_and_is_acked() -> None:
    async def refuse(record: InboundRecord) -> Sequence[OutboundRecord]:
        raise InvalidRecordError(Cause.INVALID, "goal text is empty")

    publisher = InMemoryPublisher()
    await AtLeastOnce("svc", refuse, publisher, backoff_s=0)(RECORD)

    [letter] = _letters(publisher)
    assert letter.reason == "goal text is empty"
    assert letter.cause == dead_letter_pb2.DEAD_LETTER_CAUSE_INVALID
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("in", 1, 5)


async def test_publish_failure_asks_for_redelivery_then_succeeds() -> None:
    publisher = InMemoryPublisher()
    publisher.failures_left = 1
    processor = AtLeastOnce("svc", echo, publisher, backoff_s=0)

    with pytest.raises(RedeliverError):
        await processor(RECORD)
    assert publisher.records == []

    await processor(RECORD)  # the redelivery
    assert [r.topic for r in publisher.records] == ["out"]


async def test_a_record_that_keeps_failing_is_parked_after_max_attempts() -> None:
    calls = 0

    async def broken(record: InboundRecord) -> Sequence[OutboundRecord]:
        nonlocal calls
        calls += 1
        raise KeyError("api_key=sk-secretsecret123")

    publisher = InMemoryPublisher()
    processor = AtLeastOnce("svc", broken, publisher, max_attempts=3, backoff_s=0)
    for _ in range(2):
        with pytest.raises(RedeliverError):
            await processor(RECORD)
    await processor(RECORD)  # third attempt: parked, acked

    assert calls == 3
    [letter] = _letters(publisher)
    assert letter.cause == dead_letter_pb2.DEAD_LETTER_CAUSE_HANDLER_FAILED
    assert letter.reason.startswith("3 attempts: KeyError")
    assert "secretsecret" not in letter.reason
