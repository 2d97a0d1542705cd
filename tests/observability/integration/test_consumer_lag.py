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
    committer = AIOKafkaConsumer(group_id=group, **kafka.client_kwargs("test-lag"))
    await committer.start()
    try:
        committer.assign([TopicPartition(topic, 0)])
        await committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "")})
    finally:
        await committer.stop()

    monitor = LagMonitor(kafka, group, [topic])
    await monitor.start()
    try:
        lag = await monitor.poll()
    finally:
        await monitor.stop()

    # Partition 0: 5 records, 2 committed; partition 1: nothing committed, 3 records.
    assert lag == {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 3}
    assert (
        REGISTRY.get_sample_value(
            "stepline_consumer_lag_records", {"group": group, "topic": topic, "partition": "0"}
        )
        == 3
    )
