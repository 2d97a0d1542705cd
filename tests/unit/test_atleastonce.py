"""At-least-once processing logic: outputs before ack, retries, and the dead-letter escape hatch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

from stepline.v1 import dead_letter_pb2
from stepline_runtime.atleastonce import AtLeastOnce, InMemoryPublisher, ProducerBrokenError
from stepline_runtime.codec import Cause, InvalidRecordError
from stepline_runtime.keyed import KeyedConsumer
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.settings import KafkaSettings
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
    await AtLeastOnce("svc", echo, publisher, backoff_s=0).process(RECORD)
    assert publisher.records == [OutboundRecord(topic="out", key=b"k", value=b"v")]


async def test_refused_record_goes_to_the_dead_letter_topic_and_is_acked() -> None:
    async def refuse(record: InboundRecord) -> Sequence[OutboundRecord]:
        raise InvalidRecordError(Cause.INVALID, "goal text is empty")

    publisher = InMemoryPublisher()
    await AtLeastOnce("svc", refuse, publisher, backoff_s=0).process(RECORD)

    [letter] = _letters(publisher)
    assert letter.reason == "goal text is empty"
    assert letter.cause == dead_letter_pb2.DEAD_LETTER_CAUSE_INVALID
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("in", 1, 5)


async def test_a_publish_failure_is_retried_in_place_then_succeeds() -> None:
    publisher = InMemoryPublisher()
    publisher.failures_left = 1
    await AtLeastOnce("svc", echo, publisher, backoff_s=0).process(RECORD)
    assert [r.topic for r in publisher.records] == ["out"]


async def test_an_unacknowledged_output_is_handled_again_before_returning() -> None:
    publisher = InMemoryPublisher()
    publisher.ack_failures_left = 1
    await AtLeastOnce("svc", echo, publisher, backoff_s=0).process(RECORD)
    # The first hand-over was lost with its acknowledgement; the retry's output is kept.
    assert [(r.topic, r.value) for r in publisher.records] == [("out", b"v")]


async def test_a_record_that_keeps_failing_is_parked_after_max_attempts() -> None:
    calls = 0

    async def broken(record: InboundRecord) -> Sequence[OutboundRecord]:
        nonlocal calls
        calls += 1
        raise KeyError("api_key=sk-secretsecret123")

    publisher = InMemoryPublisher()
    await AtLeastOnce("svc", broken, publisher, max_attempts=3, backoff_s=0).process(RECORD)

    assert calls == 3
    [letter] = _letters(publisher)
    assert letter.cause == dead_letter_pb2.DEAD_LETTER_CAUSE_HANDLER_FAILED
    assert letter.reason.startswith("3 attempts: KeyError")
    assert "secretsecret" not in letter.reason


async def test_a_dead_letter_that_cannot_be_published_raises() -> None:
    async def broken(record: InboundRecord) -> Sequence[OutboundRecord]:
        raise RuntimeError("handler bug")

    publisher = InMemoryPublisher()
    publisher.failures_left = 1  # the dead letter's own hand-over fails
    with pytest.raises(ConnectionError):
        await AtLeastOnce("svc", broken, publisher, max_attempts=1, backoff_s=0).process(RECORD)
    assert publisher.records == []


async def test_prepare_sees_the_fetch_in_offset_order_and_its_failure_is_not_fatal() -> None:
    seen: list[list[int]] = []

    async def prepare(records: Sequence[InboundRecord]) -> None:
        seen.append([r.offset for r in records])
        raise OSError("database away")

    processor = AtLeastOnce("svc", echo, InMemoryPublisher(), prepare=prepare)
    batch = [InboundRecord(topic="in", partition=0, offset=o, key=b"k", value=b"") for o in (3, 1)]
    await processor.prepare(batch)
    assert seen == [[1, 3]]


class _BrokenProducer(InMemoryPublisher):
    """A producer whose sends fail as aiokafka's do once its sequence numbers are out of step
    (seen after a broker restart in `make chaos-scaled`): every send, on and on."""

    async def send(self, records: Sequence[OutboundRecord]) -> Awaitable[None]:
        return _raise(OutOfOrderSequenceNumber())


async def _raise(error: Exception) -> None:
    raise error


async def test_a_broken_producer_stops_the_service_instead_of_dead_lettering() -> None:
    producer = _BrokenProducer()
    processor = AtLeastOnce("svc", echo, producer, backoff_s=0, max_attempts=2)
    stopped = asyncio.create_task(processor.wait_broken())

    for _ in range(3):  # beyond max_attempts: the record is not to blame, and stays undone
        with pytest.raises(ProducerBrokenError, match="OutOfOrderSequenceNumber"):
            await processor.process(RECORD)
    assert producer.records == []  # no dead letter

    with pytest.raises(ProducerBrokenError):
        await asyncio.wait_for(stopped, 1)


async def test_another_producer_of_the_process_broken_under_the_handler_stops_it_too() -> None:
    """The executor writes each call's intent with its changelog producer before the tool
    runs and reports a failed write as `IntentNotRecordedError` from the producer's error.
    After a broker restart in `make chaos-scaled` that producer answered
    OutOfOrderSequenceNumber for good: each request it held was tried 5 times and
    dead-lettered. Broken is broken, whichever producer and however wrapped."""

    async def records_intent(record: InboundRecord) -> Sequence[OutboundRecord]:
        try:
            await _raise(OutOfOrderSequenceNumber())
        except OutOfOrderSequenceNumber as error:
            raise RuntimeError("the intent was not recorded; the tool was not run") from error
        return []

    publisher = InMemoryPublisher()
    processor = AtLeastOnce("svc", records_intent, publisher, backoff_s=0, max_attempts=2)
    with pytest.raises(ProducerBrokenError, match="OutOfOrderSequenceNumber"):
        await processor.process(RECORD)
    assert publisher.records == []  # no dead letter: the record comes back to a fresh process
    with pytest.raises(ProducerBrokenError):
        await asyncio.wait_for(processor.wait_broken(), 1)


async def test_the_keyed_consumer_part_ends_when_its_producer_broke() -> None:
    processor = AtLeastOnce("svc", echo, _BrokenProducer(), backoff_s=0)
    consumer = KeyedConsumer(KafkaSettings(), ["in"], group_id="g", processor=processor)
    fetching = asyncio.create_task(asyncio.sleep(3600))
    consumer._fetching = fetching  # started, as far as `wait` is concerned
    waiting = asyncio.create_task(consumer.wait())
    with pytest.raises(ProducerBrokenError):
        await processor.process(RECORD)
    with pytest.raises(ProducerBrokenError):
        await asyncio.wait_for(waiting, 1)
    assert not fetching.done()  # stopping the fetch loop is left to `stop()`
    fetching.cancel()
