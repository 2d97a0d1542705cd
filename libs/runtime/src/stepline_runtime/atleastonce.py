"""At-least-once consumption for the FastStream services (router, executor, billing).

FastStream's default ack policy commits before the handler runs, which loses a message when the
process dies mid-handler. Here records are consumed in batches, handled concurrently across keys
(in order within a key), their outputs handed to the producer without a round trip each, and the
batch's offsets committed once, only after every output is acknowledged by the broker. Failures
are retried with backoff by redelivery, and a record that keeps failing, or cannot be decoded at
all, goes to the dead-letter topic so the partition never stalls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from stepline_runtime import faults, tracing
from stepline_runtime.codec import Cause, InvalidRecordError
from stepline_runtime.deadletter import dead_letter
from stepline_runtime.logs import redact
from stepline_runtime.metrics import (
    RECORD_SECONDS,
    RECORDS_DEAD_LETTERED,
    RECORDS_PROCESSED,
    RECORDS_REDELIVERED,
)
from stepline_runtime.processor import inbound
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import Topics
from stepline_vocab import SteplineError

__all__ = [
    "AtLeastOnce",
    "BrokerPublisher",
    "Handle",
    "InMemoryPublisher",
    "Prepare",
    "Publisher",
    "RedeliverError",
    "broker_for",
    "subscribe",
]

log = logging.getLogger(__name__)

Handle = Callable[[InboundRecord], Awaitable[Sequence[OutboundRecord]]]
# Batch-wide work before the records of a batch are handled one by one (billing writes the
# batch's ledger rows in one transaction); the per-record handler must not depend on it.
Prepare = Callable[[Sequence[InboundRecord]], Awaitable[None]]


def broker_for(kafka: KafkaSettings, client_id: str) -> KafkaBroker:
    """A FastStream broker on `kafka` whose producer is idempotent with acks=all."""
    common = kafka.client_kwargs(client_id)
    return KafkaBroker(
        # A comma-separated string would be taken as one host name: pass the list.
        [server.strip() for server in kafka.bootstrap.split(",") if server.strip()],
        security=kafka.faststream_security(),
        enable_idempotence=True,
        acks="all",
        client_id=common["client_id"],
        request_timeout_ms=common["request_timeout_ms"],
        retry_backoff_ms=common["retry_backoff_ms"],
        # FastStream's own logger prints coloured text to stdout; ours propagates to the JSON
        # handler. Its per-message lines ("Received", "Processed") are DEBUG, not INFO.
        logger=logging.getLogger("faststream.kafka"),
        log_level=logging.DEBUG,
    )


class Publisher(Protocol):
    """Outbound port: hand records to the producer; their acknowledgement is awaited separately."""

    async def send(self, records: Sequence[OutboundRecord]) -> Awaitable[None]:
        """Hand `records` to the producer; the result resolves once the broker acked them all."""

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Produce `records`; raise if any was not acknowledged."""


class BrokerPublisher:
    """`Publisher` over a FastStream `KafkaBroker` (idempotent producer, acks=all)."""

    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker

    async def send(self, records: Sequence[OutboundRecord]) -> Awaitable[None]:
        """Append every record to the producer's buffers; acknowledgements come in the result."""
        pending = [
            await self._broker.publish(
                record.value,
                record.topic,
                key=record.key,
                partition=record.partition,
                headers={k: v.decode("utf-8", errors="replace") for k, v in record.headers},
                no_confirm=True,
            )
            for record in records
        ]
        return _all_of(pending)

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Send all records concurrently, then wait for every acknowledgement."""
        await (await self.send(records))


async def _all_of(pending: Sequence[Awaitable[Any]]) -> None:
    await asyncio.gather(*pending)


class InMemoryPublisher:
    """`Publisher` twin for unit tests: keeps what was acknowledged, can fail on demand.

    `failures_left` fails the hand-over itself, `ack_failures_left` the acknowledgement.
    """

    def __init__(self) -> None:
        self.records: list[OutboundRecord] = []
        self.failures_left = 0
        self.ack_failures_left = 0

    async def send(self, records: Sequence[OutboundRecord]) -> Awaitable[None]:
        """Accept `records` (or raise); the result keeps them, or fails while asked to."""
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("injected publish failure")
        failing = self.ack_failures_left > 0
        if failing:
            self.ack_failures_left -= 1
        # Kept at hand-over, in order, as a producer's buffer would; lost if the ack fails.
        kept = list(records)
        if not failing:
            self.records.extend(kept)
        return _acknowledged(failing)

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Record `records`, or raise while a failure is pending."""
        await (await self.send(records))


async def _acknowledged(failing: bool) -> None:
    if failing:
        raise ConnectionError("injected acknowledgement failure")


Coordinates = tuple[str, int, int]
Rewinds = dict[tuple[str, int], int]


@dataclass(slots=True)
class _Batch:
    """What became of each record of one batch while it is processed."""

    # Outputs handed to the producer, acknowledgement outstanding.
    sent: list[tuple[InboundRecord, Awaitable[None]]] = field(default_factory=list)
    # Failed (handler, hand-over or acknowledgement): retried or parked.
    failed: list[tuple[InboundRecord, Exception]] = field(default_factory=list)
    # Not attempted, or attempted after a failed record of the same key: delivered again.
    blocked: list[InboundRecord] = field(default_factory=list)
    done: list[InboundRecord] = field(default_factory=list)


def _coordinates(record: InboundRecord) -> Coordinates:
    return (record.topic, record.partition, record.offset)


class AtLeastOnce:
    """Processes batches of records: keys in parallel, each key in order, one commit per batch.

    Each record is handled, its outputs are handed to the producer without waiting, and only
    when every output of the batch is acknowledged may the batch's offsets be committed. A
    record that failed is retried by redelivery (with backoff) up to `max_attempts`, then
    dead-lettered; records after it on its partition are either delivered again (same key, so
    their order holds) or remembered as done and skipped on the redelivery (other keys), so
    a failure alone never duplicates an output — only a crash does.
    """

    def __init__(
        self,
        consumer: str,
        handle: Handle,
        publisher: Publisher,
        *,
        max_attempts: int = 5,
        backoff_s: float = 0.2,
        dead_letter_topic: str = Topics.DLQ,
        lanes: int = 8,
        prepare: Prepare | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._consumer = consumer
        self._handle = handle
        self._publisher = publisher
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._dead_letter_topic = dead_letter_topic
        self._lanes = asyncio.Semaphore(max(1, lanes))
        self._prepare = prepare
        self._clock = clock
        self._attempts: dict[Coordinates, int] = {}
        # Records done beyond a rewind point: skipped when delivered again, until committed.
        self._done: set[Coordinates] = set()
        self._last_reason = ""

    async def __call__(self, record: InboundRecord) -> None:
        """Process `record`; returning means it may be committed, raising means redeliver it."""
        if await self.process_batch([record]):
            raise RedeliverError(self._last_reason)

    async def process_batch(self, records: Sequence[InboundRecord]) -> Rewinds:
        """Process `records`; return, per partition, the offset to deliver again from.

        Offsets of partitions not in the result may be committed up to the batch's end; the
        caller seeks the others back so that the commit stops at the returned offset.
        """
        batch = _Batch()
        lanes: dict[tuple[str, int, bytes | None], list[InboundRecord]] = {}
        for record in records:
            if _coordinates(record) in self._done:
                batch.done.append(record)
            else:
                lanes.setdefault((record.topic, record.partition, record.key), []).append(record)
        if self._prepare is not None:
            await self._prepared([r for lane in lanes.values() for r in lane])
        await asyncio.gather(*(self._run_lane(lane, batch) for lane in lanes.values()))
        acks = await asyncio.gather(*(ack for _, ack in batch.sent), return_exceptions=True)
        failed_keys: set[tuple[str, int, bytes | None]] = set()
        for (record, _), ack in zip(batch.sent, acks, strict=True):
            lane = (record.topic, record.partition, record.key)
            if isinstance(ack, Exception):
                batch.failed.append((record, ack))
                failed_keys.add(lane)
            elif isinstance(ack, BaseException):
                raise ack
            elif lane in failed_keys:
                # Acked, but after a record of its key whose outputs were not: redo both in order.
                batch.blocked.append(record)
            else:
                self._succeeded(record)
                batch.done.append(record)
        return await self._settle(records, batch)

    async def _prepared(self, records: list[InboundRecord]) -> None:
        assert self._prepare is not None
        try:
            await self._prepare(sorted(records, key=_coordinates))
        except Exception as error:
            # Each record's handler still does its own work (and retries it): only slower.
            log.warning(
                "batch preparation failed; handling record by record",
                extra={"reason": redact(f"{type(error).__name__}: {error}")},
            )

    async def _run_lane(self, lane: list[InboundRecord], batch: _Batch) -> None:
        async with self._lanes:
            for index, record in enumerate(lane):
                with tracing.handling(record, self._consumer):
                    outcome = await self._start(record)
                if isinstance(outcome, Exception):
                    batch.failed.append((record, outcome))
                    batch.blocked.extend(lane[index + 1 :])
                    return
                batch.sent.append((record, outcome))

    async def _start(self, record: InboundRecord) -> Awaitable[None] | Exception:
        """Handle `record` and hand its outputs (or its dead letter) to the producer."""
        started = time.perf_counter()
        try:
            outputs = tracing.stamp(await self._handle(record))
            faults.record_handled(record.offset)
        except InvalidRecordError as refused:
            outputs = self._letter(record, refused.cause, refused.reason)
        except Exception as error:
            return error
        finally:
            RECORD_SECONDS.labels(self._consumer, record.topic).observe(
                time.perf_counter() - started
            )
        try:
            return await self._publisher.send(outputs)
        except Exception as error:
            return error

    def _succeeded(self, record: InboundRecord) -> None:
        self._attempts.pop(_coordinates(record), None)
        RECORDS_PROCESSED.labels(self._consumer, record.topic).inc()

    async def _settle(self, records: Sequence[InboundRecord], batch: _Batch) -> Rewinds:
        """Retry or park the failed records; work out where each partition resumes."""
        again = list(batch.blocked)
        backoff = 0.0
        for record, error in sorted(batch.failed, key=lambda f: _coordinates(f[0])):
            attempt = self._attempts.get(_coordinates(record), 0) + 1
            reason = redact(f"{type(error).__name__}: {error}")
            if attempt >= self._max_attempts:
                self._attempts.pop(_coordinates(record), None)
                log.error(
                    "giving up on record after %d attempts", attempt, extra={"reason": reason}
                )
                with tracing.handling(record, self._consumer):
                    letter = self._letter(
                        record, Cause.HANDLER_FAILED, f"{attempt} attempts: {reason}"
                    )
                    # If this fails the exception propagates: the batch is redelivered.
                    await self._publisher.publish(letter)
                self._succeeded(record)
                batch.done.append(record)
                continue
            self._attempts[_coordinates(record)] = attempt
            self._last_reason = reason
            RECORDS_REDELIVERED.labels(self._consumer, record.topic).inc()
            log.warning(
                "record failed; it will be redelivered",
                extra={
                    "attempt": attempt,
                    "topic": record.topic,
                    "offset": record.offset,
                    "reason": reason,
                },
            )
            backoff = max(backoff, self._backoff_s * 2 ** (attempt - 1))
            again.append(record)
        rewinds: Rewinds = {}
        for record in again:
            partition = (record.topic, record.partition)
            rewinds[partition] = min(rewinds.get(partition, record.offset), record.offset)
        ends: dict[tuple[str, int], int] = {}
        for record in records:
            partition = (record.topic, record.partition)
            ends[partition] = max(ends.get(partition, 0), record.offset + 1)
        for record in batch.done:
            rewind = rewinds.get((record.topic, record.partition))
            if rewind is not None and record.offset > rewind:
                self._done.add(_coordinates(record))
        # Forget what the commit now covers.
        self._done = {
            c for c in self._done if c[2] >= rewinds.get((c[0], c[1]), ends.get((c[0], c[1]), -1))
        }
        if backoff:
            await asyncio.sleep(backoff)
        return rewinds

    def _letter(self, record: InboundRecord, cause: Cause, reason: str) -> list[OutboundRecord]:
        RECORDS_DEAD_LETTERED.labels(self._consumer, record.topic, cause.value).inc()
        letter = dead_letter(
            record,
            cause,
            reason,
            consumer=self._consumer,
            now=self._clock(),
            topic=self._dead_letter_topic,
        )
        return tracing.stamp([letter])


class RedeliverError(SteplineError, RuntimeError):
    """Raised to make FastStream nack (seek back) so the record is delivered again."""


def subscribe(
    broker: KafkaBroker,
    *topics: str,
    group_id: str,
    processor: AtLeastOnce,
    max_records: int = 200,
    batch_timeout_ms: int = 25,
    record_workers: int = 0,
) -> Any:
    """Register `processor` on `topics`: batches, committed once each after all outputs.

    `record_workers` > 0 takes one record at a time on that many consumers of the group instead:
    for handlers whose latency varies by seconds (model calls, tools), where a batch's slowest
    record would hold back the next fetch for every key (FastStream has no concurrent batch
    subscriber). Same guarantee: the offset is committed after the record's outputs.
    """
    # Commit only after the handler returned; nack (seek back to the first record not done) when
    # it raised. Inputs may be produced inside transactions (the planner's): read committed only.
    if record_workers > 0:
        per_record = broker.subscriber(
            *topics,
            group_id=group_id,
            ack_policy=AckPolicy.NACK_ON_ERROR,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_workers=record_workers,
        )

        @per_record
        async def on_record(message: KafkaMessage) -> None:
            await processor(inbound(message.raw_message))

        return on_record
    subscriber = broker.subscriber(
        *topics,
        batch=True,
        max_records=max_records,
        # getmany returns as soon as records are there; this bounds an idle poll (FastStream
        # sleeps as long again after an empty one, so it is kept short for latency).
        batch_timeout_ms=batch_timeout_ms,
        group_id=group_id,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )

    @subscriber
    async def on_batch(message: KafkaMessage) -> None:
        raw = message.raw_message
        rewinds = await processor.process_batch(
            [inbound(r) for r in (raw if isinstance(raw, tuple) else (raw,))]
        )
        # A seek moves the consumed position back, so the commit that follows stops there.
        for (topic, partition), offset in rewinds.items():
            message.consumer.seek(TopicPartition(topic, partition), offset)

    return on_batch
