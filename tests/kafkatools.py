"""Helpers for tests on the real broker: create topics, read them back."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stepline_runtime.settings import KafkaSettings

__all__ = ["create_topics", "read_all"]


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
