"""The outcome changelog on Kafka, and the rebalance listener that restores it on assignment."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from stepline_executor.outcomes import Apply
from stepline_runtime.processor import inbound
from stepline_runtime.records import OutboundRecord
from stepline_runtime.settings import KafkaSettings

__all__ = ["KafkaChangelog", "RestoreOnAssignment"]

log = logging.getLogger(__name__)

_BATCH = 2_000


class KafkaChangelog:
    """`Changelog` on a Kafka topic: idempotent acks=all writes, reads by one restore consumer."""

    def __init__(self, kafka: KafkaSettings, topic: str, *, client_id: str) -> None:
        self._topic = topic
        self._producer = AIOKafkaProducer(
            enable_idempotence=True, acks="all", **kafka.client_kwargs(f"{client_id}-outcomes")
        )
        # No group: the partition to read is assigned by hand, from the offset asked for.
        self._consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            # A fetch in flight holds up the offset lookups of the next read for this long.
            fetch_max_wait_ms=50,
            **kafka.client_kwargs(f"{client_id}-restore"),
        )
        # One restore consumer serves every partition: restores take turns.
        self._reading = asyncio.Lock()

    async def start(self) -> None:
        """Connect the producer and the restore consumer."""
        await self._producer.start()
        await self._consumer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        await self._consumer.stop()
        await self._producer.stop()

    async def write(self, record: OutboundRecord) -> int:
        """Append `record` and wait until the broker acknowledged it (acks=all)."""
        metadata = await self._producer.send_and_wait(
            record.topic,
            record.value,
            key=record.key,
            partition=record.partition,
            headers=list(record.headers),
        )
        offset: int = metadata.offset
        return offset

    async def read(self, partition: int, start: int, apply: Apply) -> int:
        """Feed `partition` from `start` (or its oldest kept record) to its current end."""
        tp = TopicPartition(self._topic, partition)
        async with self._reading:
            self._consumer.assign([tp])
            first: int = (await self._consumer.beginning_offsets([tp]))[tp]
            end: int = (await self._consumer.end_offsets([tp]))[tp]
            if start > end:
                # The topic was recreated under us: what we read before is gone from it too.
                start = first
            start = max(start, first)
            try:
                if start >= end:
                    return end
                self._consumer.seek(tp, start)
                while await self._consumer.position(tp) < end:
                    batch = await self._consumer.getmany(tp, timeout_ms=1_000, max_records=_BATCH)
                    records = [inbound(r) for r in batch.get(tp, []) if r.offset < end]
                    if records:
                        await apply(records)
                return end
            finally:
                # No background fetch between reads (it would delay the next read's offsets).
                self._consumer.pause(tp)


class _Restorable(Protocol):
    async def restore(self, partitions: Collection[int]) -> None: ...

    def revoke(self, partitions: Collection[int]) -> None: ...


class RestoreOnAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Catches the outcome store up for every request partition assigned, before its records
    are handled; marks revoked ones to be caught up again before their next use (the consumer
    calls it after the calls in flight on them finished or were given up).

    It works per partition, never on "this consumer's whole assignment", so it stays right
    whichever consumer of this process calls it.
    """

    def __init__(self, store: _Restorable, requests_topic: str) -> None:
        self._store = store
        self._topic = requests_topic

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        """Another instance may own these next and write their outcomes."""
        partitions = sorted(tp.partition for tp in revoked if tp.topic == self._topic)
        self._store.revoke(partitions)
        log.info("outcome partitions revoked", extra={"partitions": partitions})

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        """Read the changelog partitions of `assigned` to their end."""
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self._topic)
        started = time.perf_counter()
        try:
            await self._store.restore(partitions)
        except Exception:
            # aiokafka only logs a listener's failure: the partitions stay marked, and each
            # one is caught up before its first call instead (or that call is redelivered).
            log.warning("outcome restore failed; retried on first use", exc_info=True)
            return
        log.info(
            "outcomes restored for assigned partitions",
            extra={
                "partitions": partitions,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
