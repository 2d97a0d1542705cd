"""Key-ordered parallel consumption: one consumer, many records in flight, commits by prefix.

The at-least-once services (router, executor, billing) handle records whose latency varies from
microseconds to minutes. Batches would make every key wait for a batch's slowest record, and
one consumer per worker caps the work in flight at the number of workers. Here one consumer
fetches continuously; each record starts at once in its key's lane (records of one key run one
after another, in offset order; different keys run in parallel), up to `max_in_flight` records;
and a partition's offset is committed every `commit_interval_s` up to the first record that is
not done yet — so a slow record holds back only its own key and the commit position, never
other keys' work (the pattern of Confluent's Parallel Consumer, key ordering).

When partitions are revoked (rebalance or stop), their records in flight are given
`drain_timeout_s` to finish and what is done is committed before the partitions go, so a
rebalance does not redo finished work; a record still running then is redelivered to the next
owner, as after a crash. Records done beyond the committed position (behind a slow one) are
listed in the commit's metadata, so whoever takes the partition after a crash skips them rather
than doing them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import KafkaError

from stepline_runtime.atleastonce import AtLeastOnce
from stepline_runtime.logs import redact
from stepline_runtime.metrics import RECORDS_IN_FLIGHT
from stepline_runtime.processor import inbound
from stepline_runtime.records import InboundRecord
from stepline_runtime.settings import GROUP_METADATA_MAX_AGE_MS, KafkaSettings

__all__ = ["KeyedConsumer", "Progress", "decode_done", "encode_done"]

log = logging.getLogger(__name__)

# Back-off when even the dead letter of a record could not be published (broker down).
_STUCK_BACKOFF_S = 1.0
# Commit metadata listing done offsets above the position; the broker's default limit on
# metadata (offset.metadata.max.bytes) is 4,096 bytes. What does not fit is redone after a crash.
_DONE_PREFIX = "done:"
_MAX_METADATA = 3_000


def encode_done(position: int, done: Collection[int]) -> str:
    """Commit metadata naming `done` offsets (all above `position`), as many as fit."""
    text = _DONE_PREFIX
    for offset in sorted(done):
        piece = f"{offset - position},"
        if len(text) + len(piece) > _MAX_METADATA:
            break
        text += piece
    return text.rstrip(",") if done else ""


def decode_done(position: int, metadata: str) -> set[int]:
    """The done offsets that `encode_done` wrote (empty for any other metadata)."""
    if not metadata.startswith(_DONE_PREFIX):
        return set()
    try:
        return {position + int(d) for d in metadata[len(_DONE_PREFIX) :].split(",") if d}
    except ValueError:
        return set()


@dataclass(slots=True)
class Progress:
    """Offsets of one partition in flight, in fetch order, and which of them are done."""

    pending: dict[int, bool] = field(default_factory=dict)
    # The next offset to commit (one past the last done record of the done prefix).
    position: int | None = None
    committed: tuple[int, str] | None = None
    # Offsets a previous owner finished beyond its committed position: not done again.
    skip: set[int] = field(default_factory=set)
    # The next offset expected from the fetcher: anything below was started already (a fetch
    # from before the seek on assignment).
    next_offset: int | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Leaving (revoked or stopping): records fetched for it are no longer started.
    leaving: bool = False

    def started(self, offset: int) -> None:
        """`offset` was fetched and started."""
        self.pending[offset] = False

    def finished(self, offset: int) -> None:
        """`offset` is done; advance the position over the done prefix."""
        if offset not in self.pending:
            return
        self.pending[offset] = True
        while self.pending:
            first = next(iter(self.pending))
            if not self.pending[first]:
                break
            del self.pending[first]
            self.position = first + 1

    def to_commit(self) -> tuple[int, str] | None:
        """The offset and metadata to commit, when they changed since the last commit.

        The offset is the first record not done; the metadata lists the done ones above it.
        """
        position = self.position
        if self.pending:
            position = next(iter(self.pending))
        if position is None:
            return None
        done = [offset for offset, finished in self.pending.items() if finished]
        commit = (position, encode_done(position, done))
        return None if commit == self.committed else commit


class KeyedConsumer:
    """Consumes `topics` as `group_id`; runs `processor` per record, keys in parallel."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: Sequence[str],
        *,
        group_id: str,
        processor: AtLeastOnce,
        max_in_flight: int = 256,
        commit_interval_s: float = 0.2,
        drain_timeout_s: float = 30.0,
        listener: ConsumerRebalanceListener | None = None,
        max_poll_records: int = 500,
    ) -> None:
        self.name = f"consumer:{processor.consumer}"
        self._kafka = kafka
        self._topics = list(topics)
        self._group_id = group_id
        self._processor = processor
        self._max_in_flight = max(1, max_in_flight)
        self._commit_interval_s = commit_interval_s
        self._drain_timeout_s = drain_timeout_s
        self._listener = listener
        self._max_poll_records = max_poll_records
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: dict[TopicPartition, Progress] = {}
        self._tails: dict[tuple[TopicPartition, bytes], asyncio.Task[None]] = {}
        self._in_flight = 0
        self._room = asyncio.Event()
        self._fetching: asyncio.Task[None] | None = None
        self._last_commit = 0.0

    @property
    def in_flight(self) -> int:
        """Records started and not done yet."""
        return self._in_flight

    @property
    def partitions(self) -> frozenset[TopicPartition]:
        """The partitions assigned to this instance now."""
        return frozenset(self._partitions)

    async def start(self) -> None:
        """Join the group and start fetching."""
        self._consumer = AIOKafkaConsumer(
            group_id=self._group_id,
            # aiokafka speaks only the eager rebalance protocol (no cooperative assignors):
            # sticky assignment keeps each member's partitions where they were, so a rebalance
            # moves only those of the member that left or joined. Its memory of the last
            # assignment is class state: one subclass per consumer. One assignor only:
            # aiokafka 0.14 sends a JoinGroup per assignor listed, the second with other
            # metadata, which rebalances the group again, and under churn for minutes
            # (RELIABILITY.md, "Scaled chaos"). Members of the previous release also list
            # sticky, so a rolling upgrade still finds a common protocol.
            partition_assignment_strategy=(
                type("StickyPartitionAssignor", (StickyPartitionAssignor,), {}),
            ),
            # A killed member is noticed after the session timeout; a member restarted with
            # the same static id within it gets its partitions back without a rebalance.
            session_timeout_ms=self._kafka.session_timeout_ms,
            heartbeat_interval_ms=max(1_000, self._kafka.session_timeout_ms // 3),
            group_instance_id=self._kafka.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Inputs may be produced inside transactions (the planner's): read committed only.
            isolation_level="read_committed",
            metadata_max_age_ms=GROUP_METADATA_MAX_AGE_MS,
            max_poll_records=self._max_poll_records,
            **self._kafka.client_kwargs(self._processor.consumer),
        )
        await self._consumer.start()
        self._consumer.subscribe(self._topics, listener=_Rebalance(self))
        self._fetching = asyncio.create_task(self._fetch(), name=self.name)

    async def stop(self) -> None:
        """Stop fetching, let the records in flight finish (bounded), commit, leave the group."""
        if self._fetching is not None:
            self._fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetching
            self._fetching = None
        if self._consumer is None:
            return
        await self.revoked(list(self._partitions))
        await self._consumer.stop()
        self._consumer = None

    async def wait(self) -> None:
        """Return (or raise) only if fetching ended on its own (a bug, never a broker outage),
        or the processor's producer broke (`ProducerBrokenError`: the service stops and its
        supervisor starts it afresh)."""
        assert self._fetching is not None
        broken = asyncio.ensure_future(self._processor.wait_broken())
        try:
            # Neither is cancelled when this waiter is: stopping the part is `stop()`'s job.
            await asyncio.wait({self._fetching, broken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not broken.done():
                broken.cancel()
        if broken.done() and not broken.cancelled():
            broken.result()
        await asyncio.shield(self._fetching)

    async def _fetch(self) -> None:
        assert self._consumer is not None
        while True:
            room = self._max_in_flight - self._in_flight
            if room <= 0:
                # Full: wait for a record to finish (the group heartbeat runs on its own).
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), self._commit_interval_s)
                await self._commit_due()
                continue
            try:
                fetched = await self._consumer.getmany(
                    timeout_ms=int(self._commit_interval_s * 1000),
                    max_records=min(room, self._max_poll_records),
                )
            except KafkaError as error:
                log.warning("fetch failed; retrying", extra={"reason": redact(str(error))})
                await asyncio.sleep(self._kafka.retry_backoff_ms / 1000)
                continue
            records = [
                (tp, progress, inbound(r)) for tp, batch in fetched.items() for r in batch
                if (progress := self._partitions.get(tp)) is not None and not progress.leaving
            ]  # fmt: skip
            await self._processor.prepare([r for _, _, r in records])
            for tp, progress, record in records:
                # A rebalance may have revoked (or revoked and re-assigned) the partition while
                # the batch was prepared: its records are then fetched again by its owner.
                if self._partitions.get(tp) is progress and not progress.leaving:
                    self._start(tp, record)
            await self._commit_due()

    def _start(self, tp: TopicPartition, record: InboundRecord) -> None:
        progress = self._partitions[tp]
        if progress.next_offset is not None and record.offset < progress.next_offset:
            return
        progress.next_offset = record.offset + 1
        progress.started(record.offset)
        if record.offset in progress.skip:
            # Done by the partition's previous owner, which died before its position got here.
            progress.skip.discard(record.offset)
            progress.finished(record.offset)
            return
        # A record without a key has no order to keep (Kafka spreads them over partitions).
        lane = (tp, record.key) if record.key is not None else None
        previous = self._tails.get(lane) if lane is not None else None
        task = asyncio.create_task(self._run(tp, record, previous))
        progress.tasks.add(task)
        if lane is not None:
            self._tails[lane] = task
            task.add_done_callback(lambda t: self._forget(lane, t))
        self._in_flight += 1
        RECORDS_IN_FLIGHT.labels(self._processor.consumer).set(self._in_flight)

    def _forget(self, lane: tuple[TopicPartition, bytes], task: asyncio.Task[None]) -> None:
        if self._tails.get(lane) is task:
            del self._tails[lane]

    async def _run(
        self, tp: TopicPartition, record: InboundRecord, previous: asyncio.Task[None] | None
    ) -> None:
        progress = self._partitions[tp]
        try:
            if previous is not None:
                # The key's earlier record first; its failure or cancellation is its own.
                await asyncio.wait({previous})
            while True:
                try:
                    await self._processor.process(record)
                    break
                except Exception as error:
                    log.error(
                        "record could be neither handled nor dead-lettered; retrying",
                        extra={"offset": record.offset, "reason": redact(str(error))},
                    )
                    await asyncio.sleep(_STUCK_BACKOFF_S)
            progress.finished(record.offset)
        finally:
            progress.tasks.discard(asyncio.current_task())
            self._in_flight -= 1
            RECORDS_IN_FLIGHT.labels(self._processor.consumer).set(self._in_flight)
            self._room.set()

    async def _commit_due(self) -> None:
        now = time.monotonic()
        if now - self._last_commit < self._commit_interval_s:
            return
        self._last_commit = now
        await self._commit(list(self._partitions))

    async def _commit(self, partitions: Collection[TopicPartition]) -> None:
        assert self._consumer is not None
        offsets = {
            tp: offset
            for tp in partitions
            if tp in self._partitions and (offset := self._partitions[tp].to_commit()) is not None
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as error:
            # The group moved on (rebalance) or the broker is away: the records are delivered
            # again to whoever owns the partition, as after a crash.
            log.warning("offset commit failed", extra={"reason": redact(str(error))})
            return
        for tp, offset in offsets.items():
            if tp in self._partitions:
                self._partitions[tp].committed = offset

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Track newly assigned partitions, after the caller's listener restored its state."""
        if self._listener is not None:
            await self._listener.on_partitions_assigned(set(partitions))
        fresh = [tp for tp in partitions if tp not in self._partitions]
        committed = await self._committed(fresh)
        assert self._consumer is not None
        for tp in fresh:
            self._partitions[tp] = progress = Progress()
            # The fetcher may have run while the offsets were read, and records of a partition
            # not tracked yet are dropped: fetch from the committed position again.
            if tp in committed:
                position, metadata = committed[tp]
                progress.skip = decode_done(position, metadata)
                progress.committed = (position, metadata)
                self._consumer.seek(tp, position)
            else:
                await self._consumer.seek_to_beginning(tp)

    async def _committed(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, str]]:
        """The committed offset and metadata of `partitions` (empty when they cannot be read)."""
        if not partitions:
            return {}
        admin = AIOKafkaAdminClient(
            **self._kafka.client_kwargs(f"{self._processor.consumer}-offsets")
        )
        try:
            await admin.start()
            found = await admin.list_consumer_group_offsets(self._group_id, partitions=partitions)
        except KafkaError as error:
            # Only an optimisation is lost: records done beyond the position are done again.
            log.warning("committed offsets unreadable", extra={"reason": redact(str(error))})
            return {}
        finally:
            await admin.close()
        return {
            tp: (meta.offset, meta.metadata or "") for tp, meta in found.items() if meta.offset >= 0
        }

    async def _release(self, partitions: Collection[TopicPartition]) -> None:
        """Drain and commit `partitions`, then stop tracking them."""
        mine = [tp for tp in partitions if tp in self._partitions]
        for tp in mine:
            self._partitions[tp].leaving = True
        running = {t for tp in mine for t in self._partitions[tp].tasks}
        if running:
            _, late = await asyncio.wait(running, timeout=self._drain_timeout_s)
            for task in late:
                task.cancel()
            if late:
                log.warning(
                    "records still running when their partitions left; they are delivered again",
                    extra={"records": len(late)},
                )
                await asyncio.wait(late)
        await self._commit(mine)
        for tp in mine:
            del self._partitions[tp]
        for lane in [lane for lane in self._tails if lane[0] in set(mine)]:
            del self._tails[lane]

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        """Finish (bounded) and commit what the revoked partitions have in flight."""
        await self._release(partitions)
        if self._listener is not None:
            await self._listener.on_partitions_revoked(set(partitions))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards aiokafka's rebalance callbacks to the consumer."""

    def __init__(self, owner: KeyedConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self._owner.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self._owner.assigned(assigned)
