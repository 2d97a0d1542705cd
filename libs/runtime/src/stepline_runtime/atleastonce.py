"""At-least-once consumption for the FastStream services (router, executor, billing).

FastStream's default ack policy commits before the handler runs, which loses a message when the
process dies mid-handler. Here the offset is committed only after every output is acknowledged
by the broker; failures are retried with backoff, and a record that keeps failing, or cannot be
decoded at all, goes to the dead-letter topic so the partition never stalls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

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
    "Publisher",
    "RedeliverError",
    "broker_for",
    "subscribe",
]

log = logging.getLogger(__name__)

Handle = Callable[[InboundRecord], Awaitable[Sequence[OutboundRecord]]]


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
    """Outbound port: produce records and return once the broker has acknowledged all of them."""

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Produce `records`; raise if any was not acknowledged."""


class BrokerPublisher:
    """`Publisher` over a FastStream `KafkaBroker` (idempotent producer, acks=all)."""

    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Send all records concurrently, then wait for every acknowledgement."""
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
        await asyncio.gather(*pending)


class InMemoryPublisher:
    """`Publisher` twin for unit tests: keeps what was published, can fail on demand."""

    def __init__(self) -> None:
        self.records: list[OutboundRecord] = []
        self.failures_left = 0

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Record `records`, or raise while `failures_left` is positive."""
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("injected publish failure")
        self.records.extend(records)


class AtLeastOnce:
    """Runs `handle` for one record, publishes its outputs, dead-letters what cannot succeed."""

    def __init__(
        self,
        consumer: str,
        handle: Handle,
        publisher: Publisher,
        *,
        max_attempts: int = 5,
        backoff_s: float = 0.2,
        dead_letter_topic: str = Topics.DLQ,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._consumer = consumer
        self._handle = handle
        self._publisher = publisher
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._dead_letter_topic = dead_letter_topic
        self._clock = clock
        self._attempts: dict[tuple[str, int, int], int] = {}

    async def __call__(self, record: InboundRecord) -> None:
        """Process `record`; returning means it may be committed, raising means redeliver it."""
        # One consumer span per delivery; outputs (dead letters too) carry its traceparent.
        with tracing.handling(record, self._consumer):
            await self._process(record)

    async def _process(self, record: InboundRecord) -> None:
        coordinates = (record.topic, record.partition, record.offset)
        started = time.perf_counter()
        try:
            outputs = tracing.stamp(await self._handle(record))
            faults.record_handled(record.offset)
        except InvalidRecordError as refused:
            await self._dead_letter(record, refused.cause, refused.reason)
            return
        except Exception as error:
            await self._retry_or_park(record, coordinates, error)
            return
        finally:
            RECORD_SECONDS.labels(self._consumer, record.topic).observe(
                time.perf_counter() - started
            )
        try:
            await self._publisher.publish(outputs)
        except Exception as error:
            await self._retry_or_park(record, coordinates, error)
            return
        self._attempts.pop(coordinates, None)
        RECORDS_PROCESSED.labels(self._consumer, record.topic).inc()

    async def _retry_or_park(
        self, record: InboundRecord, coordinates: tuple[str, int, int], error: Exception
    ) -> None:
        attempt = self._attempts.get(coordinates, 0) + 1
        reason = redact(f"{type(error).__name__}: {error}")
        if attempt >= self._max_attempts:
            self._attempts.pop(coordinates, None)
            log.error("giving up on record after %d attempts", attempt, extra={"reason": reason})
            await self._dead_letter(record, Cause.HANDLER_FAILED, f"{attempt} attempts: {reason}")
            return
        self._attempts[coordinates] = attempt
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
        await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        raise RedeliverError(reason) from error

    async def _dead_letter(self, record: InboundRecord, cause: Cause, reason: str) -> None:
        letter = dead_letter(
            record,
            cause,
            reason,
            consumer=self._consumer,
            now=self._clock(),
            topic=self._dead_letter_topic,
        )
        # If this publish fails the exception propagates: the record is redelivered, not lost.
        await self._publisher.publish(tracing.stamp([letter]))
        RECORDS_DEAD_LETTERED.labels(self._consumer, record.topic, cause.value).inc()
        RECORDS_PROCESSED.labels(self._consumer, record.topic).inc()


class RedeliverError(SteplineError, RuntimeError):
    """Raised to make FastStream nack (seek back) so the record is delivered again."""


def subscribe(
    broker: KafkaBroker,
    *topics: str,
    group_id: str,
    processor: AtLeastOnce,
    max_workers: int = 1,
) -> Any:
    """Register `processor` on `topics` with commit-after-processing semantics."""
    subscriber = broker.subscriber(
        *topics,
        group_id=group_id,
        # Commit only after the handler returned; nack (seek back) when it raised.
        ack_policy=AckPolicy.NACK_ON_ERROR,
        # Inputs may be produced inside transactions (the planner's): never see aborted ones.
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_workers=max_workers,
    )

    @subscriber
    async def on_record(message: KafkaMessage) -> None:
        await processor(inbound(message.raw_message))

    return on_record
