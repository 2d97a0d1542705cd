"""Consumer lag is end offset minus committed offset, read from a real broker."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import REGISTRY

from stepline_runtime.observe import LagMonitor
from stepline_runtime.settings import KafkaSettings
from tests.kafkatools import create_topics


async def test_lag_counts_records_after_the_committed_offset(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    topic, group = unique("lag"), unique("lag-group")
    await create_topics(admin, topic, partitions=2)
    for _ in range(5):
        await producer.send_and_wait(topic, b"v", key=b"k", partition=0)
    for _ in range(3):
        await producer.send_and_wait(topic, b"v", key=b"k", partition=1)
    committer = AIOKafkaConsumer(
        group_id=group, enable_auto_commit=False, **kafka.client_kwargs("test-lag")
    )
    await committer.start()
    try:
        committer.assign([TopicPartition(topic, 0)])
        await committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "")})
    finally:
        await committer.stop()

    # Partition 0: 5 records, 2 committed; partition 1: nothing committed, 3 records.
    expected = {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 3}
    monitor = LagMonitor(kafka, group, [topic])
    await monitor.start()
    try:
        lag = await monitor.poll()
    finally:
        await monitor.stop()

    assert lag == expected
    assert (
        REGISTRY.get_sample_value(
            "stepline_consumer_lag_records", {"group": group, "topic": topic, "partition": "0"}
        )
        == 3
    )


async def _transactional_batches(
    kafka: KafkaSettings, topic: str, transactional_id: str, sizes: list[int]
) -> AIOKafkaProducer:
    """One committed transaction per size (each ends with a commit marker) on partition 0;
    returns the producer, still open, so a test can leave one more transaction open."""
    producer = AIOKafkaProducer(
        transactional_id=transactional_id, **kafka.client_kwargs("test-lag-tx")
    )
    await producer.start()
    for size in sizes:
        async with producer.transaction():
            for _ in range(size):
                await producer.send(topic, b"v", key=b"k", partition=0)
    return producer


async def _commit(kafka: KafkaSettings, group: str, offsets: dict[TopicPartition, int]) -> None:
    committer = AIOKafkaConsumer(
        group_id=group, enable_auto_commit=False, **kafka.client_kwargs("test-lag")
    )
    await committer.start()
    try:
        committer.assign(list(offsets))
        await committer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await committer.stop()


async def _poll(kafka: KafkaSettings, group: str, topic: str) -> dict[TopicPartition, int]:
    monitor = LagMonitor(kafka, group, [topic])
    await monitor.start()
    try:
        return await monitor.poll()
    finally:
        await monitor.stop()


async def test_a_fully_consumed_transactional_partition_has_no_lag(
    kafka: KafkaSettings, admin: AIOKafkaAdminClient, unique: Callable[[str], str]
) -> None:
    topic, group = unique("lag-tx"), unique("lag-tx-group")
    await create_topics(admin, topic, partitions=1)
    producer = await _transactional_batches(kafka, topic, unique("tx"), [2, 2])
    await producer.stop()
    tp = TopicPartition(topic, 0)
    # Offsets 0 1 [marker 2] 3 4 [marker 5]: a consumer that read record 4 commits 5; the commit
    # marker at offset 5 is no record, so nothing is left to consume.
    await _commit(kafka, group, {tp: 5})

    assert await _poll(kafka, group, topic) == {tp: 0}
    assert (
        REGISTRY.get_sample_value(
            "stepline_consumer_lag_records", {"group": group, "topic": topic, "partition": "0"}
        )
        == 0
    )


async def test_transactional_lag_counts_committed_records_not_markers_or_open_ones(
    kafka: KafkaSettings, admin: AIOKafkaAdminClient, unique: Callable[[str], str]
) -> None:
    topic, group = unique("lag-tx"), unique("lag-tx-group")
    await create_topics(admin, topic, partitions=1)
    # Offsets: 0 1 [marker 2] 3 4 [marker 5] 6 7 [marker 8], then an open transaction.
    producer = await _transactional_batches(kafka, topic, unique("tx"), [2, 2, 2])
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"open", key=b"k", partition=0)
        tp = TopicPartition(topic, 0)
        await _commit(kafka, group, {tp: 2})  # the first transaction was consumed
        # Left: 3 4 6 7 — four records; the markers and the open transaction's record are not.
        assert await _poll(kafka, group, topic) == {tp: 4}
    finally:
        await producer.abort_transaction()
        await producer.stop()
