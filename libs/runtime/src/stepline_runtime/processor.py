"""The transactional processor: consume → handle → produce outputs and state → commit, atomically.

Each assigned input partition is a *task* with its own transactional producer
(`<app_id>-<partition>`), the Kafka Streams EOS-v1 pattern: aiokafka cannot fence zombies across
a rebalance with one shared producer (aiokafka #844), but a per-partition transactional id is
fenced by whichever process initialises it next. Input topics must be co-partitioned with the
state changelog, so partition `p` of every input and of the changelog belong to task `p`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import (
    IllegalOperation,
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from prometheus_client import Counter, Histogram

from stepline_runtime import tracing
from stepline_runtime.codec import Cause, InvalidRecordError
from stepline_runtime.deadletter import dead_letter
from stepline_runtime.logs import redact
from stepline_runtime.metrics import (
    RECORD_SECONDS,
    RECORDS_DEAD_LETTERED,
    RECORDS_PROCESSED,
    TRANSACTIONS,
)
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.settings import GROUP_METADATA_MAX_AGE_MS, KafkaSettings
from stepline_runtime.topics import Topics

__all__ = ["ProcessorConfig", "StatefulHandler", "TransactionalProcessor", "inbound"]

log = logging.getLogger(__name__)

_Record: TypeAlias = "ConsumerRecord[bytes, bytes]"

# Errors after which a transactional producer must not be used again (ARCHITECTURE.md §7).
_FATAL = (
    # aiokafka raises this (not a KafkaError) on send when a background fence ended the txn.
    IllegalOperation,
    ProducerFenced,
    InvalidProducerEpoch,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    IllegalStateError,
)


# Raised by a producer that cannot even abort or stop: a Kafka error, or aiokafka's assertion
# on leaving its FATAL_ERROR state (after e.g. an EndTxn answered UnknownError).
_UNUSABLE = (KafkaError, AssertionError)


class StatefulHandler(Protocol):
    """What the processor drives. `handle` must not change state when it raises."""

    def forget(self, partition: int) -> None:
        """Drop all state of `partition` (revoked, or about to be restored)."""

    async def restore(self, partition: int, records: Sequence[InboundRecord]) -> None:
        """Fold a batch of changelog records (oldest first) into the state of `partition`."""

    async def handle(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        """Outputs (changelog updates too) for one input; raise InvalidRecordError to refuse it."""

    async def tick(self, partition: int, now: datetime) -> Sequence[OutboundRecord]:
        """Outputs due by `now` (timers) for `partition`; usually empty."""


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    """How a processor consumes and where its state lives."""

    app_id: str
    inputs: tuple[str, ...]
    changelog: str
    max_batch: int = 500
    tick_interval_s: float = 1.0
    session_timeout_ms: int = 10_000
    transaction_timeout_ms: int = 60_000
    retry_backoff_s: float = 0.5
    dead_letter_topic: str = Topics.DLQ
    # An input without `traceparent` joins the trace derived from its key (the planner: run id).
    trace_from_key: bool = False


def inbound(record: _Record) -> InboundRecord:
    """Convert an aiokafka record into the library-free `InboundRecord`."""
    return InboundRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple((k, bytes(v) if v is not None else b"") for k, v in record.headers),
        timestamp_ms=record.timestamp,
    )


@dataclass
class _Task:
    partition: int
    producer: AIOKafkaProducer
    next_tick: float = 0.0
    fenced: bool = False
    inputs: list[TopicPartition] = field(default_factory=list)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: TransactionalProcessor) -> None:
        self._processor = processor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Waiting for the lock means no transaction is open when the group moves on.
        async with self._processor._lock:
            pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._processor._lock:
            await self._processor._reassign(set(assigned))


class TransactionalProcessor:
    """Runs a `StatefulHandler` over co-partitioned inputs with exactly-once transactions."""

    def __init__(
        self,
        config: ProcessorConfig,
        handler: StatefulHandler,
        kafka: KafkaSettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._handler = handler
        self._kafka = kafka
        self._clock = clock
        self._lock = asyncio.Lock()
        self._restoring = asyncio.Lock()
        self._tasks: dict[int, _Task] = {}
        self._metrics: dict[str, tuple[Histogram, Counter]] = {}
        self._stopping = asyncio.Event()
        self._consumer = AIOKafkaConsumer(
            group_id=config.app_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=max(1_000, config.session_timeout_ms // 3),
            metadata_max_age_ms=GROUP_METADATA_MAX_AGE_MS,
            **kafka.client_kwargs(f"{config.app_id}-consumer"),
        )
        self._restorer = AIOKafkaConsumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            **kafka.client_kwargs(f"{config.app_id}-restore"),
        )

    @property
    def partitions(self) -> frozenset[int]:
        """Partitions (tasks) this instance owns right now."""
        return frozenset(self._tasks)

    async def run(self) -> None:
        """Process until `stop()` is called; leaves the group cleanly."""
        await self._restorer.start()
        await self._consumer.start()
        self._consumer.subscribe(list(self._config.inputs), listener=_Rebalance(self))
        try:
            while not self._stopping.is_set():
                batch = await self._consumer.getmany(
                    timeout_ms=int(self._config.tick_interval_s * 1000),
                    max_records=self._config.max_batch,
                )
                async with self._lock:
                    await self._process(batch)
                    await self._tick_due()
        finally:
            async with self._lock:
                for partition in list(self._tasks):
                    await self._close_task(partition)
            await self._consumer.stop()
            await self._restorer.stop()

    def stop(self) -> None:
        """Ask `run()` to finish after the current batch."""
        self._stopping.set()

    # --- assignment -------------------------------------------------------------------------

    async def _reassign(self, assigned: set[TopicPartition]) -> None:
        by_partition: dict[int, list[TopicPartition]] = defaultdict(list)
        for tp in assigned:
            by_partition[tp.partition].append(tp)
        for partition in set(self._tasks) - set(by_partition):
            await self._close_task(partition)
        log.info(
            "partitions assigned",
            extra={"partitions": sorted(by_partition), "app": self._config.app_id},
        )
        # A retained task needs no restore: in an eager rebalance nobody else owned it in
        # between, and if somebody did, its producer fenced ours (handled as fatal).
        opening = [p for p in by_partition if p not in self._tasks or self._tasks[p].fenced]
        # Concurrently: a dozen serial InitProducerId round trips outlast the rebalance timeout.
        async with asyncio.TaskGroup() as group:
            for partition in opening:
                group.create_task(self._open_task(partition))
        for partition, tps in by_partition.items():
            self._tasks[partition].inputs = sorted(tps)

    async def _open_task(self, partition: int) -> None:
        if partition in self._tasks:
            await self._close_task(partition)
        producer = AIOKafkaProducer(
            transactional_id=f"{self._config.app_id}-{partition}",
            enable_idempotence=True,
            acks="all",
            transaction_timeout_ms=self._config.transaction_timeout_ms,
            **self._kafka.client_kwargs(f"{self._config.app_id}-{partition}"),
        )
        # start() runs InitProducerId: it fences the previous owner and aborts its open
        # transaction, so the changelog read below contains only committed state.
        await producer.start()
        self._tasks[partition] = _Task(partition, producer)
        await self._restore(partition)
        log.info("task assigned", extra={"partition": partition, "app": self._config.app_id})

    async def _close_task(self, partition: int) -> None:
        task = self._tasks.pop(partition, None)
        self._handler.forget(partition)
        if task is not None:
            with contextlib.suppress(*_UNUSABLE):
                await task.producer.stop()

    async def _restore(self, partition: int) -> None:
        # One restore consumer serves every task: tasks opening concurrently take turns.
        async with self._restoring:
            await self._restore_from_changelog(partition)

    async def _restore_from_changelog(self, partition: int) -> None:
        self._handler.forget(partition)
        tp = TopicPartition(self._config.changelog, partition)
        self._restorer.assign([tp])
        await self._restorer.seek_to_beginning(tp)
        end = (await self._restorer.end_offsets([tp]))[tp]
        restored = 0
        while await self._restorer.position(tp) < end:
            batch = await self._restorer.getmany(tp, timeout_ms=1_000, max_records=2_000)
            records = [inbound(r) for r in batch.get(tp, [])]
            if records:
                await self._handler.restore(partition, records)
                restored += len(records)
        log.info("state restored", extra={"partition": partition, "records": restored})

    # --- processing -------------------------------------------------------------------------

    async def _process(self, batch: dict[TopicPartition, list[_Record]]) -> None:
        by_task: dict[int, dict[TopicPartition, list[_Record]]] = defaultdict(dict)
        for tp, fetched in batch.items():
            if fetched:
                by_task[tp.partition][tp] = fetched
        # Tasks are independent (own producer, own state), so their transactions run
        # concurrently; within a task records stay in order.
        async with asyncio.TaskGroup() as group:
            for partition, per_tp in by_task.items():
                task = self._tasks.get(partition)
                if task is None or task.fenced:
                    # An earlier recovery failed: try again; the rewind fetches these again.
                    group.create_task(self._recover(partition, reopen=True))
                    continue
                offsets = {tp: rs[-1].offset + 1 for tp, rs in per_tp.items()}
                inputs = [r for rs in per_tp.values() for r in rs]
                group.create_task(self._transact(task, inputs, offsets))

    async def _tick_due(self) -> None:
        now = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for task in list(self._tasks.values()):
                if task.fenced or now < task.next_tick:
                    continue
                task.next_tick = now + self._config.tick_interval_s
                group.create_task(self._tick(task))

    async def _tick(self, task: _Task) -> None:
        outputs = await self._handler.tick(task.partition, self._clock())
        if outputs:
            await self._transact(task, [], {}, ready=list(outputs))

    async def _transact(
        self,
        task: _Task,
        inputs: list[_Record],
        offsets: dict[TopicPartition, int],
        *,
        ready: list[OutboundRecord] | None = None,
    ) -> None:
        producer = task.producer
        try:
            await producer.begin_transaction()
            sends = [await self._send(task, out) for out in ready or []]
            for record in inputs:
                for out in await self._outputs(inbound(record)):
                    sends.append(await self._send(task, out))
            if sends:
                await asyncio.gather(*sends)
            # The offsets only after every send is acknowledged: adding them while the produce
            # requests were in flight (one round trip less, in theory) stalled aiokafka's sender
            # for up to ~0.5 s per transaction (full stack at 10 runs in flight: 176 -> 35 steps/s).
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self._config.app_id)
            await producer.commit_transaction()
            TRANSACTIONS.labels(self._config.app_id, "committed").inc()
        except _FATAL as error:
            TRANSACTIONS.labels(self._config.app_id, "fenced").inc()
            log.warning(
                "producer fenced or broken; re-opening the task",
                extra={"partition": task.partition, "error": repr(error)},
            )
            task.fenced = True
            await self._recover(task.partition, reopen=True)
        except KafkaError as error:
            TRANSACTIONS.labels(self._config.app_id, "aborted").inc()
            log.warning(
                "transaction failed; re-running from the last commit",
                extra={"partition": task.partition, "error": repr(error)},
            )
            try:
                await producer.abort_transaction()
            except _UNUSABLE:
                task.fenced = True  # a producer that cannot abort cannot be trusted either
            await self._recover(task.partition, reopen=task.fenced)

    async def _recover(self, partition: int, *, reopen: bool) -> None:
        """Rebuild the task's state and rewind its inputs to the group's committed offsets.

        Rewinding to the *committed* offsets, not to the failed batch, matters when this
        process was a zombie: another owner may have committed further in the meantime.
        """
        await asyncio.sleep(self._config.retry_backoff_s)
        inputs = [tp for tp in self._consumer.assignment() if tp.partition == partition]
        if not inputs:
            await self._close_task(partition)
            return
        try:
            if reopen:
                await self._open_task(partition)  # fences any other owner first
            else:
                await self._restore(partition)
            for tp in inputs:
                committed = await self._consumer.committed(tp)
                if committed is None:
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, committed)
        except KafkaError:
            log.exception(
                "cannot recover the task yet; retrying on its next records",
                extra={"partition": partition},
            )
            task = self._tasks.get(partition)
            if task is not None:
                task.fenced = True

    async def _outputs(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        app = self._config.app_id
        started = time.perf_counter()
        with tracing.handling(record, app, derive_from_key=self._config.trace_from_key):
            outputs = tracing.stamp(await self._handled(record))
        seconds, processed = self._record_metrics(record.topic)
        seconds.observe(time.perf_counter() - started)
        processed.inc()
        return outputs

    def _record_metrics(self, topic: str) -> tuple[Histogram, Counter]:
        # `labels()` locks and hashes on every call; the children per input topic are fixed.
        metrics = self._metrics.get(topic)
        if metrics is None:
            app = self._config.app_id
            metrics = (RECORD_SECONDS.labels(app, topic), RECORDS_PROCESSED.labels(app, topic))
            self._metrics[topic] = metrics
        return metrics

    async def _handled(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        try:
            return await self._handler.handle(record)
        except InvalidRecordError as failure:
            cause, reason = failure.cause, failure.reason
        except Exception as error:  # a bug must not stop the partition: park the record
            log.exception(
                "handler failed; dead-lettering the record",
                extra={"topic": record.topic, "offset": record.offset},
            )
            cause, reason = Cause.HANDLER_FAILED, redact(f"{type(error).__name__}: {error}")
        RECORDS_DEAD_LETTERED.labels(self._config.app_id, record.topic, cause.value).inc()
        return [
            dead_letter(
                record,
                cause,
                reason,
                consumer=self._config.app_id,
                now=self._clock(),
                topic=self._config.dead_letter_topic,
            )
        ]

    async def _send(self, task: _Task, out: OutboundRecord) -> asyncio.Future[Any]:
        partition = out.partition
        if partition is None and out.topic == self._config.changelog:
            # State must live in the task's own changelog partition, whatever the key hashes to.
            partition = task.partition
        sent: asyncio.Future[Any] = await task.producer.send(
            out.topic, out.value, key=out.key, headers=list(out.headers), partition=partition
        )
        # When the transaction fails midway, the remaining futures fail with it; their error is
        # handled as the transaction's, so mark it retrieved rather than logged as lost.
        sent.add_done_callback(_retrieve)
        return sent
