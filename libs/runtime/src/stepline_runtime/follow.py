"""Follow compacted topics from their beginning into memory, and keep following them.

For tables every instance holds whole (key registry, spend totals, tools, budgets): read every
partition to its current end (`start` returns then, so a service never serves from half a
table), then poll in the background so a new event is seen within a poll (~0.5 s). Records the
callback refuses go to the DLQ with the reason; a broker outage never ends the follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from stepline_runtime.codec import Cause, InvalidRecordError
from stepline_runtime.deadletter import dead_letter
from stepline_runtime.processor import inbound
from stepline_runtime.records import InboundRecord
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import assignable_partitions

__all__ = ["CompactedFollower"]

log = logging.getLogger(__name__)

_POLL_MS = 500


class CompactedFollower:
    """Feeds every record of `topics` (tombstones included) to `apply`, oldest first per partition.

    `apply` raises one of `refused` for a record it cannot use; that record is dead-lettered
    and following goes on. With `partition_counts` the partitions come from those counts (the
    service checked them at start); without, from the broker's metadata.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: Sequence[str],
        apply: Callable[[InboundRecord], None],
        *,
        client_id: str,
        dead_letter_topic: str,
        consumer_name: str | None = None,
        partition_counts: Mapping[str, int] | None = None,
        refused: tuple[type[Exception], ...] = (ValueError,),
    ) -> None:
        self._topics = tuple(topics)
        self._apply = apply
        self._consumer_name = consumer_name or client_id
        self._dead_letter_topic = dead_letter_topic
        self._counts = None if partition_counts is None else dict(partition_counts)
        self._refused = refused
        # No consumer group: every instance reads every partition from the beginning.
        self._consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **kafka.client_kwargs(client_id),
        )
        # A restart re-reads the topics and parks a refused record again under the same
        # deterministic event id.
        self._dead_letters = AIOKafkaProducer(
            enable_idempotence=True, acks="all", **kafka.client_kwargs(f"{client_id}-dlq")
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the topics up to their current end, then keep following in the background."""
        await self._dead_letters.start()
        await self._consumer.start()
        partitions = await self._partitions()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        end = await self._consumer.end_offsets(partitions)
        while True:
            positions = [await self._consumer.position(tp) for tp in partitions]
            if all(p >= end[tp] for p, tp in zip(positions, partitions, strict=True)):
                break
            await self._poll()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
        await self._dead_letters.stop()

    async def _partitions(self) -> list[TopicPartition]:
        if self._counts is not None:
            counts = self._counts
            return [
                TopicPartition(topic, p)
                for topic in self._topics
                for p in range(counts.get(topic, 0))
            ]
        return [
            tp
            for topic in self._topics
            for tp in await assignable_partitions(self._consumer, topic)
        ]

    async def _follow(self) -> None:
        while True:
            try:
                await self._poll()
            except KafkaError:
                # A frozen table would keep serving stale entries (revoked keys, old budgets):
                # keep trying, loudly.
                log.warning(
                    "follower of %s: Kafka unavailable; retrying",
                    ", ".join(self._topics),
                    exc_info=True,
                )
                await asyncio.sleep(1)

    async def _poll(self) -> None:
        batch = await self._consumer.getmany(timeout_ms=_POLL_MS)
        for records in batch.values():
            for raw in records:
                record = inbound(raw)
                try:
                    self._apply(record)
                except self._refused as error:
                    cause = error.cause if isinstance(error, InvalidRecordError) else Cause.INVALID
                    await self._park(record, cause, str(error))

    async def _park(self, record: InboundRecord, cause: Cause, reason: str) -> None:
        letter = dead_letter(
            record,
            cause,
            reason,
            consumer=self._consumer_name,
            now=datetime.now(UTC),
            topic=self._dead_letter_topic,
        )
        await self._dead_letters.send_and_wait(
            letter.topic, letter.value, key=letter.key, headers=list(letter.headers)
        )
