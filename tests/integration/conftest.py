"""Integration fixtures: a real broker (started by `make test`), unique topics per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stepline_runtime.settings import KafkaSettings


@pytest.fixture(scope="session")
def kafka() -> KafkaSettings:
    """Settings for the broker under test; fails with guidance when none is configured."""
    if not os.environ.get("STEPLINE_KAFKA_BOOTSTRAP"):
        pytest.fail(
            "no broker: run `make test`, or `make kafka-up` and export "
            "STEPLINE_KAFKA_BOOTSTRAP=127.0.0.1:9092"
        )
    return KafkaSettings()


@pytest.fixture
async def admin(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client for the test broker."""
    client = AIOKafkaAdminClient(**kafka.client_kwargs("test-admin"))
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names unique to this test, so tests never see each other's records."""
    suffix = uuid.uuid4().hex[:8]
    return lambda name: f"test.{name}.{suffix}"


async def create_topics(
    admin: AIOKafkaAdminClient, *names: str, partitions: int = 3, compact: tuple[str, ...] = ()
) -> None:
    """Create test topics and wait until their metadata is visible."""
    await admin.create_topics(
        [
            NewTopic(
                n,
                partitions,
                1,
                topic_configs={"cleanup.policy": "compact"} if n in compact else {},
            )
            for n in names
        ]
    )
    for _ in range(50):
        described = await admin.describe_topics(list(names))
        if all(len(d["partitions"]) == partitions for d in described):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"topics {names} did not appear")


async def read_all(
    kafka: KafkaSettings,
    topic: str,
    *,
    expect: int,
    timeout_s: float = 60,
    committed_only: bool = True,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read a topic from the beginning until `expect` records arrived (or the timeout)."""
    consumer = AIOKafkaConsumer(
        topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
        **kafka.client_kwargs("test-reader"),
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(records) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for fetched in batch.values():
                records.extend(fetched)
        # Linger briefly: anything beyond `expect` would be a duplicate.
        for fetched in (await consumer.getmany(timeout_ms=1_000)).values():
            records.extend(fetched)
    finally:
        await consumer.stop()
    return records


async def end_offsets(kafka: KafkaSettings, topic: str, partitions: int) -> dict[int, int]:
    """Log-end offsets per partition (aborted records and markers included)."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs("test-offsets"))
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


@pytest.fixture
async def producer(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    """An idempotent producer for seeding input topics."""
    client = AIOKafkaProducer(
        enable_idempotence=True, acks="all", **kafka.client_kwargs("test-producer")
    )
    await client.start()
    try:
        yield client
    finally:
        await client.stop()
