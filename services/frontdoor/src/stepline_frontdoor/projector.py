"""Inbound Kafka port of the read model: runs, usage, model and tool results, from positions.

The projector assigns itself every partition of `stepline.runs.v1`, `stepline.usage.v1`,
`stepline.model.results.v1` (for the attempts a circuit breaker refused, which have no usage
record), `stepline.tool.results.v1`, and billing's `stepline.usage.rollups.v1` and
`stepline.budgets.v1`
(no consumer group: the read model's own table of next offsets is the position, written in the
same transaction as the rows), so an empty store starts from the beginning of the topics and a
restart resumes exactly where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from stepline.v1 import budgets_pb2, model_pb2, runs_pb2, tools_pb2, usage_pb2
from stepline_frontdoor.convert import (
    attempt_row,
    budget_row,
    refused_attempts,
    rollup_row,
    run_fact,
    tool_output_row,
)
from stepline_frontdoor.live import RunFeed
from stepline_frontdoor.readmodel import AttemptRow, BudgetRow, RollupRow, RunFact, ToolOutputRow
from stepline_frontdoor.store import Position, ReadStore
from stepline_runtime.codec import InvalidRecordError, decode
from stepline_runtime.processor import inbound
from stepline_runtime.records import InboundRecord
from stepline_runtime.settings import KafkaSettings

__all__ = ["Projector"]

log = logging.getLogger(__name__)


class Projector:
    """Folds the runs and usage topics into the store and wakes live views."""

    def __init__(
        self,
        store: ReadStore,
        feed: RunFeed,
        kafka: KafkaSettings,
        *,
        runs_topic: str,
        usage_topic: str,
        tool_results_topic: str,
        model_results_topic: str,
        budgets_topic: str,
        rollups_topic: str,
        partitions: Mapping[str, int],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._feed = feed
        self._kafka = kafka
        self._runs_topic = runs_topic
        self._usage_topic = usage_topic
        self._tool_results_topic = tool_results_topic
        self._model_results_topic = model_results_topic
        self._budgets_topic = budgets_topic
        self._rollups_topic = rollups_topic
        self._partitions = dict(partitions)
        self._clock = clock
        self._stopping = asyncio.Event()
        self.caught_up = asyncio.Event()
        self.skipped = 0

    def stop(self) -> None:
        """Ask `run` to return after the current batch."""
        self._stopping.set()

    async def run(self) -> None:
        """Project until `stop`."""
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            **self._kafka.client_kwargs("frontdoor-projector"),
        )
        await consumer.start()
        try:
            assigned = await self._assign(consumer)
            end = await consumer.end_offsets(assigned)
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=300, max_records=500)
                for records in batch.values():
                    for record in records:
                        self._apply(inbound(record))
                if not self.caught_up.is_set() and await self._reached(consumer, end):
                    self.caught_up.set()
                    log.info("read model caught up", extra={"partitions": len(assigned)})
        finally:
            await consumer.stop()

    @staticmethod
    async def _reached(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
        for tp, offset in end.items():
            if await consumer.position(tp) < offset:
                return False
        return True

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        assigned = [
            TopicPartition(topic, p)
            for topic in (
                self._runs_topic,
                self._usage_topic,
                self._tool_results_topic,
                self._model_results_topic,
                self._budgets_topic,
                self._rollups_topic,
            )
            for p in range(self._partitions[topic])
        ]
        consumer.assign(assigned)
        positions = self._store.positions()
        for tp in assigned:
            offset = positions.get((tp.topic, tp.partition))
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        return assigned

    def _apply(self, record: InboundRecord) -> None:
        at = Position(record.topic, record.partition, record.offset)
        received = (
            datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
            if record.timestamp_ms
            else self._clock()
        )
        if record.topic == self._runs_topic:
            fact = self._decode_run(record, received)
            projection = self._store.apply_run_event(fact, at)
            if projection is not None and fact is not None:
                self._feed.changed(fact.run_id)
        elif record.topic == self._usage_topic:
            row = self._decode_usage(record, received)
            if self._store.apply_attempt(row, at) and row is not None and row.run_id:
                self._feed.changed(row.run_id)
        elif record.topic == self._model_results_topic:
            refused = self._decode_model_result(record, received)
            if self._store.apply_attempts(refused, at) and refused:
                self._feed.changed(refused[0].run_id)
        elif record.topic == self._budgets_topic:
            self._store.apply_budget(self._decode_budget(record, received), at)
        elif record.topic == self._rollups_topic:
            self._store.apply_rollup(self._decode_rollup(record, received), at)
        else:
            output = self._decode_tool_result(record, received)
            if self._store.apply_tool_output(output, at) and output is not None:
                self._feed.changed(output.run_id)

    def _decode_run(self, record: InboundRecord, received: datetime) -> RunFact | None:
        try:
            event = decode(record, [runs_pb2.RunEvent]).message
            return run_fact(event, received)
        except (InvalidRecordError, ValueError) as error:
            self._skip(record, str(error))
            return None

    def _decode_usage(self, record: InboundRecord, received: datetime) -> AttemptRow | None:
        try:
            usage = decode(record, [usage_pb2.UsageRecorded]).message
            return attempt_row(usage, received)
        except (InvalidRecordError, ValueError) as error:
            self._skip(record, str(error))
            return None

    def _decode_model_result(self, record: InboundRecord, received: datetime) -> list[AttemptRow]:
        try:
            result = decode(record, [model_pb2.ModelCallResult]).message
            return refused_attempts(result, received)
        except (InvalidRecordError, ValueError) as error:
            self._skip(record, str(error))
            return []

    def _decode_budget(self, record: InboundRecord, received: datetime) -> BudgetRow | None:
        if record.value is None:
            return None  # a tombstone on the compacted topic: nothing to show
        try:
            return budget_row(decode(record, [budgets_pb2.BudgetState]).message, received)
        except (InvalidRecordError, ValueError) as error:
            self._skip(record, str(error))
            return None

    def _decode_rollup(self, record: InboundRecord, received: datetime) -> RollupRow | None:
        try:
            return rollup_row(decode(record, [usage_pb2.UsageRollup]).message, received)
        except (InvalidRecordError, ValueError) as error:
            self._skip(record, str(error))
            return None

    def _decode_tool_result(
        self, record: InboundRecord, received: datetime
    ) -> ToolOutputRow | None:
        try:
            result = decode(record, [tools_pb2.ToolCallResult]).message
            return tool_output_row(result, received)
        except (InvalidRecordError, ValueError) as error:
            self._skip(record, str(error))
            return None

    def _skip(self, record: InboundRecord, reason: str) -> None:
        # Not ours to dead-letter: the producer's consumers judge their own inputs.
        self.skipped += 1
        log.warning(
            "record skipped by the read model",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": reason,
            },
        )
