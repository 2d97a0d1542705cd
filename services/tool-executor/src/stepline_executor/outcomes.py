"""Outcome store: durable intent ("started") and outcome ("completed") records per call.

The executor writes "started" before a tool runs and "completed" with the result after, so a
redelivered request can tell "done" (replay the result) from "maybe done" (re-run only if the
tool is idempotent) from "never started".

The records live in a changelog partitioned like the requests (`ChangelogOutcomeStore`): the
record of a call sits in the partition of its request, and whichever instance owns that request
partition catches the changelog partition up to its end before handling it, so any number of
instances share nothing but the changelog, and a partition that moves takes its outcomes along.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from stepline.v1 import tools_pb2
from stepline_executor.model import Outcome
from stepline_executor.wire import outcome_from_proto, outcome_to_proto, timestamp, when
from stepline_runtime.codec import Cause, InvalidRecordError, decode, encode
from stepline_runtime.deadletter import dead_letter
from stepline_runtime.records import InboundRecord, OutboundRecord

__all__ = [
    "Apply",
    "CallState",
    "Changelog",
    "ChangelogOutcomeStore",
    "InMemoryChangelog",
    "InMemoryOutcomeStore",
    "OutcomeStore",
    "StoredCall",
    "call_from_record",
    "call_record",
]

log = logging.getLogger(__name__)


class CallState(StrEnum):
    """Where a call got to."""

    STARTED = "started"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class StoredCall:
    """One call's record."""

    call_id: str
    tool: str
    state: CallState
    attempts: int
    outcome: Outcome | None
    # When the last attempt was started (None: never started, or not known).
    started_at: datetime | None = None


class OutcomeStore(Protocol):
    """Outbound port: durable per-call records; every write is durable when it returns.

    `partition` is the partition of the call's request: a store that is partitioned keeps the
    call's record there.
    """

    async def restore(self, partitions: Collection[int]) -> None:
        """Bring the records of `partitions` up to date (their requests were just assigned)."""

    async def get(self, call_id: str, *, partition: int) -> StoredCall | None:
        """The record of `call_id`, if any."""

    async def mark_started(self, call_id: str, tool: str, at: datetime, *, partition: int) -> None:
        """Record the intent to run `call_id` (bumps the attempt count on a re-run)."""

    async def mark_completed(
        self, call_id: str, tool: str, outcome: Outcome, at: datetime, *, partition: int
    ) -> None:
        """Record the final outcome of `call_id`."""


def _started(previous: StoredCall | None, call_id: str, tool: str, at: datetime) -> StoredCall:
    attempts = previous.attempts + 1 if previous else 1
    return StoredCall(call_id, tool, CallState.STARTED, attempts, None, at)


def _completed(
    previous: StoredCall | None, call_id: str, tool: str, outcome: Outcome
) -> StoredCall:
    attempts = previous.attempts if previous else 0
    started = previous.started_at if previous else None
    # The record keeps what the call was, not that some answer was a replay of it.
    kept = replace(outcome, replayed=False)
    return StoredCall(call_id, tool, CallState.COMPLETED, attempts, kept, started)


class InMemoryOutcomeStore:
    """`OutcomeStore` twin for unit tests (one process, nothing durable)."""

    def __init__(self) -> None:
        self.calls: dict[str, StoredCall] = {}

    async def restore(self, partitions: Collection[int]) -> None:
        """Nothing to catch up: this process is the only writer."""

    async def get(self, call_id: str, *, partition: int) -> StoredCall | None:
        """The record of `call_id`, if any."""
        return self.calls.get(call_id)

    async def mark_started(self, call_id: str, tool: str, at: datetime, *, partition: int) -> None:
        """Record the intent to run `call_id`."""
        self.calls[call_id] = _started(self.calls.get(call_id), call_id, tool, at)

    async def mark_completed(
        self, call_id: str, tool: str, outcome: Outcome, at: datetime, *, partition: int
    ) -> None:
        """Record the final outcome of `call_id`."""
        self.calls[call_id] = _completed(self.calls.get(call_id), call_id, tool, outcome)


# --- the changelog -----------------------------------------------------------------------------

# Folds one batch of changelog records, oldest first.
Apply = Callable[[Sequence[InboundRecord]], Awaitable[None]]


class Changelog(Protocol):
    """Outbound port: an append-only log in partitions (a compacted Kafka topic)."""

    async def write(self, record: OutboundRecord) -> int:
        """Append `record` to its partition, wait for the acknowledgement; its offset."""

    async def read(self, partition: int, start: int, apply: Apply) -> int:
        """Feed the records of `partition` from `start` (or the oldest kept) up to its current
        end to `apply`, oldest first, in batches; the offset after the last one."""


def call_record(
    topic: str, call: StoredCall, partition: int, *, at: datetime, source: str
) -> OutboundRecord:
    """The changelog record of `call` (key: the call id) in `partition`."""
    message = tools_pb2.ToolCallRecorded(
        call_id=call.call_id,
        tool=call.tool,
        stage=(
            tools_pb2.TOOL_CALL_STAGE_COMPLETED
            if call.state is CallState.COMPLETED
            else tools_pb2.TOOL_CALL_STAGE_STARTED
        ),
        attempts=call.attempts,
    )
    if call.started_at is not None:
        message.started_at.CopyFrom(timestamp(call.started_at))
    if call.outcome is not None:
        branch = outcome_to_proto(call.outcome)
        if isinstance(branch, tools_pb2.ToolCallCompleted):
            message.completed.CopyFrom(branch)
        else:
            message.failed.CopyFrom(branch)
        if call.outcome.finished_at is not None:
            message.finished_at.CopyFrom(timestamp(call.outcome.finished_at))
        message.executed = call.outcome.executed
    record = encode(
        topic,
        call.call_id,
        message,
        event_id=f"{call.call_id}/{call.state.value}/{call.attempts}",
        source=source,
        time=at,
    )
    return replace(record, partition=partition)


def call_from_record(record: InboundRecord) -> StoredCall | None:
    """The call a changelog record holds (None: a tombstone); InvalidRecordError if unusable."""
    if record.value is None:
        return None
    message = decode(record, [tools_pb2.ToolCallRecorded]).message
    if not message.call_id or record.key != message.call_id.encode():
        raise InvalidRecordError(Cause.INVALID, "ToolCallRecorded whose key is not its call_id")
    branch = message.WhichOneof("outcome")
    if message.stage == tools_pb2.TOOL_CALL_STAGE_STARTED:
        state, outcome = CallState.STARTED, None
    elif message.stage == tools_pb2.TOOL_CALL_STAGE_COMPLETED and branch is not None:
        state = CallState.COMPLETED
        try:
            outcome = outcome_from_proto(
                message.completed if branch == "completed" else message.failed,
                finished_at=when(message.finished_at, message.HasField("finished_at")),
                executed=message.executed,
            )
        except ValueError as error:
            raise InvalidRecordError(Cause.INVALID, str(error)) from error
    else:
        raise InvalidRecordError(
            Cause.INVALID, f"ToolCallRecorded at stage {message.stage} with outcome {branch}"
        )
    return StoredCall(
        message.call_id,
        message.tool,
        state,
        message.attempts,
        outcome,
        when(message.started_at, message.HasField("started_at")),
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    # None: forgotten by a tombstone (kept so an older record read later cannot bring it back).
    call: StoredCall | None
    offset: int
    # When it was written (ms since the epoch): the broker deletes it after the retention.
    written_ms: int


# Local tables are swept for entries past the retention every this many writes.
_SWEEP_EVERY = 1_000


class ChangelogOutcomeStore:
    """`OutcomeStore` over a partitioned changelog, with a local table per partition.

    Every write goes to the changelog first (acknowledged) and then into the local table. A
    partition's table is caught up from where this instance last read it to the changelog's end
    on assignment, and before first use when its assignment was revoked since: what another
    instance wrote while it owned the partition is then known here. An entry only ever moves
    forward in changelog order, so an older record read late never hides a newer one. Entries
    older than `keep_for` (the topic's retention, after which the broker deletes them too) are
    dropped from the tables, so a long-running instance holds what the changelog holds.
    """

    def __init__(
        self,
        changelog: Changelog,
        topic: str,
        *,
        source: str,
        clock: Callable[[], datetime],
        dead_letter_topic: str,
        keep_for: timedelta | None = None,
    ) -> None:
        self._log = changelog
        self._keep_for = keep_for
        self._writes = 0
        self._topic = topic
        self._source = source
        self._clock = clock
        self._dead_letter_topic = dead_letter_topic
        self._tables: dict[int, dict[str, _Entry]] = {}
        # Offset up to which each partition was read; absent: never read (or to read again).
        self._positions: dict[int, int] = {}
        self._stale: set[int] = set()
        self._locks: dict[int, asyncio.Lock] = {}

    def revoke(self, partitions: Collection[int]) -> None:
        """`partitions` left this instance: catch them up again before they are used next."""
        self._stale.update(partitions)

    async def restore(self, partitions: Collection[int]) -> None:
        """Catch `partitions` up to the changelog's end (their requests were just assigned)."""
        for partition in sorted(set(partitions)):
            async with self._lock(partition):
                await self._catch_up(partition)

    async def get(self, call_id: str, *, partition: int) -> StoredCall | None:
        """The record of `call_id`, if any."""
        entry = (await self._table(partition)).get(call_id)
        return entry.call if entry else None

    async def mark_started(self, call_id: str, tool: str, at: datetime, *, partition: int) -> None:
        """Record the intent to run `call_id`; returns once the changelog acknowledged it."""
        previous = await self.get(call_id, partition=partition)
        await self._write(partition, _started(previous, call_id, tool, at), at)

    async def mark_completed(
        self, call_id: str, tool: str, outcome: Outcome, at: datetime, *, partition: int
    ) -> None:
        """Record the final outcome of `call_id`."""
        previous = await self.get(call_id, partition=partition)
        await self._write(partition, _completed(previous, call_id, tool, outcome), at)

    async def _write(self, partition: int, call: StoredCall, at: datetime) -> None:
        record = call_record(self._topic, call, partition, at=at, source=self._source)
        offset = await self._log.write(record)
        written_ms = int(at.timestamp() * 1000)
        self._put(self._tables.setdefault(partition, {}), call.call_id, call, offset, written_ms)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._sweep()

    @staticmethod
    def _put(
        table: dict[str, _Entry], call_id: str, call: StoredCall | None, offset: int, at_ms: int
    ) -> None:
        current = table.get(call_id)
        if current is None or current.offset < offset:
            table[call_id] = _Entry(call, offset, at_ms)

    def _sweep(self) -> None:
        """Drop entries the broker has deleted by now (older than the retention)."""
        if self._keep_for is None:
            return
        oldest_ms = int((self._clock() - self._keep_for).timestamp() * 1000)
        for table in self._tables.values():
            for call_id in [c for c, e in table.items() if e.written_ms < oldest_ms]:
                del table[call_id]

    def _lock(self, partition: int) -> asyncio.Lock:
        return self._locks.setdefault(partition, asyncio.Lock())

    async def _table(self, partition: int) -> dict[str, _Entry]:
        # Always through the lock: a catch-up in progress (on assignment) must end first.
        async with self._lock(partition):
            if partition not in self._positions or partition in self._stale:
                await self._catch_up(partition)
        return self._tables.setdefault(partition, {})

    async def _catch_up(self, partition: int) -> None:
        table = self._tables.setdefault(partition, {})
        # Cleared first: a partition revoked again while this runs is read again next time.
        self._stale.discard(partition)
        read = 0
        refused: list[OutboundRecord] = []

        async def apply(records: Sequence[InboundRecord]) -> None:
            nonlocal read
            for record in records:
                read += 1
                try:
                    call = call_from_record(record)
                except InvalidRecordError as error:
                    refused.append(self._letter(record, error))
                    continue
                key = record.key.decode("utf-8", errors="replace") if record.key else ""
                self._put(table, key, call, record.offset, record.timestamp_ms)

        start = self._positions.get(partition, 0)
        try:
            self._positions[partition] = await self._log.read(partition, start, apply)
        except BaseException:
            self._stale.add(partition)  # half read: read on from the old position next time
            raise
        for letter in refused:
            await self._log.write(letter)
        self._sweep()
        if read:
            log.info(
                "outcomes caught up",
                extra={"partition": partition, "records": read, "from_offset": start},
            )

    def _letter(self, record: InboundRecord, error: InvalidRecordError) -> OutboundRecord:
        return dead_letter(
            record,
            error.cause,
            error.reason,
            consumer=self._source,
            now=self._clock(),
            topic=self._dead_letter_topic,
        )


class InMemoryChangelog:
    """`Changelog` twin: partitions as lists; `fail_writes` makes the next writes fail."""

    def __init__(self) -> None:
        self.partitions: dict[int, list[InboundRecord]] = {}
        self.elsewhere: list[OutboundRecord] = []
        self.fail_writes = 0

    async def write(self, record: OutboundRecord) -> int:
        """Append `record` (to `elsewhere` when it has no partition, e.g. a dead letter)."""
        if self.fail_writes > 0:
            self.fail_writes -= 1
            raise ConnectionError("injected changelog write failure")
        if record.partition is None:
            self.elsewhere.append(record)
            return len(self.elsewhere) - 1
        log_ = self.partitions.setdefault(record.partition, [])
        log_.append(
            InboundRecord(
                topic=record.topic,
                partition=record.partition,
                offset=len(log_),
                key=record.key,
                value=record.value,
                headers=record.headers,
                timestamp_ms=int(time.time() * 1000),  # as a producer stamps CreateTime
            )
        )
        return len(log_) - 1

    async def read(self, partition: int, start: int, apply: Apply) -> int:
        """Feed records from `start` to the end."""
        records = self.partitions.get(partition, [])
        end = len(records)
        if start < end:
            await apply(records[start:end])
        return max(start, end)
