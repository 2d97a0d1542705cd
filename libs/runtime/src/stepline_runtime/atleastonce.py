"""At-least-once handling of one record: outputs acknowledged before it counts as done.

A record is handled, its outputs handed to the producer without a round trip each, and it is
done only once the broker acknowledged every output; `stepline_runtime.keyed` commits an offset
only when every record before it is done, so a crash loses nothing (it duplicates, and consumers
deduplicate). A failure is retried in place with backoff, which keeps the order of the record's
key; a record that keeps failing, or cannot be decoded at all, goes to the dead-letter topic so
its key never stalls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka.errors import (
    InvalidProducerEpoch,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from faststream.kafka import KafkaBroker

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
    "ProducerBrokenError",
    "Publisher",
    "broker_for",
]

log = logging.getLogger(__name__)

Handle = Callable[[InboundRecord], Awaitable[Sequence[OutboundRecord]]]
# Batch-wide work before the records of a fetch are handled one by one (billing writes their
# ledger rows in one transaction); the per-record handler must not depend on it.
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


# A producer that raised one of these sends nothing any more (aiokafka keeps its sequence
# numbers out of step with the broker): no record is to blame, the process must start afresh.
_PRODUCER_BROKEN = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)


class ProducerBrokenError(SteplineError, RuntimeError):
    """The service's producer cannot send any more: stop, so that it is started afresh."""


def _broken_producer(failure: BaseException) -> BaseException | None:
    """The broken-producer error behind `failure`, however deep a handler wrapped it (the
    executor's changelog producer fails under `IntentNotRecordedError`), else None."""
    seen: set[int] = set()
    cause: BaseException | None = failure
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, _PRODUCER_BROKEN):
            broken: BaseException = cause  # aiokafka's error classes are untyped
            return broken
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


class AtLeastOnce:
    """Handles records one by one until their outputs are acknowledged, retrying in place.

    A failed attempt (handler, hand-over to the producer or acknowledgement) is retried after
    `backoff_s`, doubling, up to `max_attempts`; then the record is dead-lettered with the reason
    and counts as done. A record the handler refuses as invalid is dead-lettered at once.
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
        prepare: Prepare | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.consumer = consumer
        self._handle = handle
        self._publisher = publisher
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._dead_letter_topic = dead_letter_topic
        self._prepare = prepare
        self._clock = clock
        self._broken = asyncio.Event()
        self._broken_reason = ""

    async def wait_broken(self) -> None:
        """Raise `ProducerBrokenError` once the producer failed beyond repair."""
        await self._broken.wait()
        raise ProducerBrokenError(self._broken_reason)

    async def prepare(self, records: Sequence[InboundRecord]) -> None:
        """Batch-wide work before `records` are handled one by one (never raises: best effort)."""
        if self._prepare is None or not records:
            return
        try:
            await self._prepare(sorted(records, key=lambda r: (r.topic, r.partition, r.offset)))
        except Exception as error:
            # Each record's handler still does its own work (and retries it): only slower.
            log.warning(
                "batch preparation failed; handling record by record",
                extra={"reason": redact(f"{type(error).__name__}: {error}")},
            )

    async def process(self, record: InboundRecord) -> None:
        """Handle `record` until its outputs (or its dead letter) are acknowledged.

        Raises only when even the dead letter could not be published, or the producer is
        broken (`ProducerBrokenError`, also raised by `wait_broken`): the caller keeps the
        record undone.
        """
        attempt = 0
        while True:
            attempt += 1
            with tracing.handling(record, self.consumer):
                failure = await self._attempt(record)
            if failure is None:
                RECORDS_PROCESSED.labels(self.consumer, record.topic).inc()
                return
            reason = redact(f"{type(failure).__name__}: {failure}")
            if (broken := _broken_producer(failure)) is not None:
                # Not the record's fault: neither an attempt nor a dead letter. It stays undone
                # and comes back to whoever holds its partition once this process has stopped.
                if broken is not failure:
                    reason = redact(f"{type(broken).__name__} under {reason}")
                if not self._broken.is_set():
                    log.error("the producer is broken; stopping", extra={"reason": reason})
                self._broken_reason = reason
                self._broken.set()
                raise ProducerBrokenError(reason)
            if attempt >= self._max_attempts:
                log.error(
                    "giving up on record after %d attempts", attempt, extra={"reason": reason}
                )
                with tracing.handling(record, self.consumer):
                    letter = self._letter(
                        record, Cause.HANDLER_FAILED, f"{attempt} attempts: {reason}"
                    )
                    await self._publisher.publish(letter)
                RECORDS_PROCESSED.labels(self.consumer, record.topic).inc()
                return
            RECORDS_REDELIVERED.labels(self.consumer, record.topic).inc()
            log.warning(
                "record failed; it will be retried",
                extra={
                    "attempt": attempt,
                    "topic": record.topic,
                    "offset": record.offset,
                    "reason": reason,
                },
            )
            await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))

    async def _attempt(self, record: InboundRecord) -> Exception | None:
        """Handle `record` once and wait for its outputs' acknowledgement; the failure, if any."""
        started = time.perf_counter()
        try:
            outputs = tracing.stamp(await self._handle(record))
            faults.record_handled(record.offset)
        except InvalidRecordError as refused:
            outputs = self._letter(record, refused.cause, refused.reason)
        except Exception as error:
            return error
        finally:
            RECORD_SECONDS.labels(self.consumer, record.topic).observe(
                time.perf_counter() - started
            )
        try:
            await (await self._publisher.send(outputs))
        except Exception as error:
            return error
        return None

    def _letter(self, record: InboundRecord, cause: Cause, reason: str) -> list[OutboundRecord]:
        RECORDS_DEAD_LETTERED.labels(self.consumer, record.topic, cause.value).inc()
        letter = dead_letter(
            record,
            cause,
            reason,
            consumer=self.consumer,
            now=self._clock(),
            topic=self._dead_letter_topic,
        )
        return tracing.stamp([letter])
