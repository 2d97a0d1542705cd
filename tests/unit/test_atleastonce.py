"""At-least-once processing logic: outputs before ack, retries, and the dead-letter escape hatch."""

from __future__ import annotations

import asyncio
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


def _batch(*keys: bytes, partition: int = 0) -> list[InboundRecord]:
    return [
        InboundRecord(topic="in", partition=partition, offset=i, key=k, value=b"%d" % i)
        for i, k in enumerate(keys)
    ]


async def test_records_of_one_key_keep_their_order_while_keys_run_in_parallel() -> None:
    events: list[str] = []
    release = asyncio.Event()

    async def slow_a(record: InboundRecord) -> Sequence[OutboundRecord]:
        events.append(f"start {record.key!r} {record.offset}")
        if record.key == b"a" and record.offset == 0:
            # Key b must run while key a's first record is still in its handler.
            await release.wait()
        if record.key == b"b":
            release.set()
        events.append(f"end {record.key!r} {record.offset}")
        return [OutboundRecord(topic="out", key=record.key, value=record.value)]

    publisher = InMemoryPublisher()
    rewinds = await AtLeastOnce("svc", slow_a, publisher, backoff_s=0).process_batch(
        _batch(b"a", b"a", b"b", b"a")
    )

    assert rewinds == {}
    assert [r.value for r in publisher.records if r.key == b"a"] == [b"0", b"1", b"3"]
    assert events.index("end b'a' 0") < events.index("start b'a' 1")
    assert events.index("start b'b' 2") < events.index("end b'a' 0")


async def test_a_batch_whose_outputs_are_not_acknowledged_is_not_committed() -> None:
    publisher = InMemoryPublisher()
    publisher.ack_failures_left = 1
    processor = AtLeastOnce("svc", echo, publisher, backoff_s=0)

    # The first record's outputs were handed over but never acknowledged: resume there.
    assert await processor.process_batch(_batch(b"a", b"a", b"b")) == {("in", 0): 0}
    # Record 1 shares the key of the unacknowledged record: handled again after it, in order.
    # Record 2 (another key) was acknowledged: skipped on the redelivery, not duplicated.
    assert await processor.process_batch(_batch(b"a", b"a", b"b")) == {}
    assert [(r.key, r.value) for r in publisher.records] == [
        (b"a", b"1"),
        (b"b", b"2"),
        (b"a", b"0"),
        (b"a", b"1"),
    ]


async def test_a_failed_record_rewinds_only_its_partition() -> None:
    async def fail_first_of_a(record: InboundRecord) -> Sequence[OutboundRecord]:
        if record.key == b"a" and record.partition == 0 and calls.setdefault(record.offset, 0) < 1:
            calls[record.offset] += 1
            raise TimeoutError("provider slow")
        return [OutboundRecord(topic="out", key=record.key, value=record.value)]

    calls: dict[int, int] = {}
    publisher = InMemoryPublisher()
    processor = AtLeastOnce("svc", fail_first_of_a, publisher, backoff_s=0)
    batch = _batch(b"b", b"a", b"b", partition=0) + _batch(b"c", b"c", partition=1)

    assert await processor.process_batch(batch) == {("in", 0): 1}
    # The redelivery starts at the failed record: record 2 (key b) is not produced twice.
    assert await processor.process_batch(batch[1:3]) == {}
    produced = [(r.key, r.value) for r in publisher.records]
    assert sorted(produced) == sorted(
        [(b"b", b"0"), (b"b", b"2"), (b"c", b"0"), (b"c", b"1"), (b"a", b"1")]
    )
