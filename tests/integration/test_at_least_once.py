"""At-least-once on a real broker: DLQ for bad bytes, commit after output."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from stepline.v1 import dead_letter_pb2, goals_pb2
from stepline_runtime.atleastonce import AtLeastOnce, BrokerPublisher
from stepline_runtime.codec import decode, encode
from stepline_runtime.keyed import KeyedConsumer
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.kafkatools import create_topics, read_all

pytestmark = pytest.mark.kafka


def _broker(kafka: KafkaSettings) -> KafkaBroker:
    return KafkaBroker(
        kafka.bootstrap,
        security=kafka.faststream_security(),
        enable_idempotence=True,
        acks="all",
        client_id="test-atleastonce",
    )


async def test_bad_bytes_go_to_the_dlq_and_the_next_record_is_processed(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    source, sink, group = unique("alo-in"), unique("alo-out"), unique("alo-group")
    await create_topics(admin, source, sink, partitions=1)
    await ensure_topics(admin, [t for t in CATALOG if t.name == Topics.DLQ], partitions=3)

    async def echo(record: InboundRecord) -> Sequence[OutboundRecord]:
        goal = decode(record, [goals_pb2.GoalSubmitted]).message
        return [OutboundRecord(sink, record.key, goal.goal.upper().encode())]

    broker = _broker(kafka)
    consumer = KeyedConsumer(
        kafka, [source], group_id=group, processor=AtLeastOnce(group, echo, BrokerPublisher(broker))
    )

    bad = await producer.send_and_wait(source, b"\x0a\xff\xff\xff", key=b"r1")
    good = encode(
        source,
        "r1",
        goals_pb2.GoalSubmitted(run_id="r1", goal="hello"),
        event_id="g1",
        source="test",
    )
    await producer.send_and_wait(source, good.value, key=good.key, headers=list(good.headers))

    async with broker:
        await broker.start()
        await consumer.start()
        outputs = await read_all(kafka, sink, expect=1, timeout_s=60)
        await consumer.stop()  # commits what is done

    assert [r.value for r in outputs] == [b"HELLO"]
    letters = [
        dead_letter_pb2.DeadLetter.FromString(r.value or b"")
        for r in await read_all(kafka, Topics.DLQ, expect=10_000, timeout_s=5)
    ]
    [letter] = [x for x in letters if x.source_topic == source]
    assert (letter.source_partition, letter.source_offset) == (0, bad.offset)
    assert letter.payload == b"\x0a\xff\xff\xff"
    assert letter.cause == dead_letter_pb2.DEAD_LETTER_CAUSE_UNDECODABLE
    assert letter.consumer == group

    committed = await admin.list_consumer_group_offsets(group)
    assert [m.offset for tp, m in committed.items() if tp.topic == source] == [2]
