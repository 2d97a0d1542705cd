"""One contract for every outcome store: the in-memory twin, the changelog store over its
in-memory log, and the changelog store on the real broker (a compacted topic)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stepline.v1 import dead_letter_pb2
from stepline_executor.changelog_kafka import KafkaChangelog
from stepline_executor.model import ErrorKind, Outcome
from stepline_executor.outcomes import (
    Apply,
    CallState,
    Changelog,
    ChangelogOutcomeStore,
    InMemoryChangelog,
    InMemoryOutcomeStore,
    OutcomeStore,
)
from stepline_runtime.records import OutboundRecord
from stepline_runtime.settings import KafkaSettings
from tests.kafkatools import create_topics, read_all

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DONE = Outcome(
    output=json.dumps({"refunded": True}),
    content_type="application/json",
    truncated=True,
    original_size=40_000,
    duration_s=0.25,
    finished_at=NOW + timedelta(seconds=1),
    executed=True,
)
UNKNOWN = Outcome.failed(
    ErrorKind.OUTCOME_UNKNOWN,
    "tool 'refund' was started and may have reached its target",
    finished_at=NOW + timedelta(seconds=2),
    duration_s=1.5,
    executed=True,
)


class _Memory:
    def __init__(self) -> None:
        self._store = InMemoryOutcomeStore()

    def store(self) -> OutcomeStore:
        return self._store


class _Log:
    def __init__(self, changelog: Changelog, topic: str, dead_letters: str) -> None:
        self.changelog = changelog
        self.topic = topic
        self.dead_letters = dead_letters

    def store(
        self, clock: Callable[[], datetime] = lambda: NOW, keep_for: timedelta | None = None
    ) -> ChangelogOutcomeStore:
        return ChangelogOutcomeStore(
            self.changelog,
            self.topic,
            source="tool-executor",
            clock=clock,
            dead_letter_topic=self.dead_letters,
            keep_for=keep_for,
        )


# Where a kind of store keeps its records; `store()` opens one more instance on it.
Backing = _Memory | _Log


@asynccontextmanager
async def _memory() -> AsyncIterator[Backing]:
    yield _Memory()


@asynccontextmanager
async def _in_memory_log() -> AsyncIterator[Backing]:
    yield _Log(InMemoryChangelog(), "outcomes", "dlq")


@asynccontextmanager
async def _kafka_log() -> AsyncIterator[Backing]:
    kafka = KafkaSettings()
    suffix = uuid.uuid4().hex[:8]
    topic, dlq = f"test.outcomes.{suffix}", f"test.dlq.{suffix}"
    admin = AIOKafkaAdminClient(**kafka.client_kwargs("test-admin"))
    await admin.start()
    try:
        await create_topics(admin, topic, dlq, partitions=2, compact=(topic,))
    finally:
        await admin.close()
    changelog = KafkaChangelog(kafka, topic, client_id="test-executor")
    await changelog.start()
    try:
        yield _Log(changelog, topic, dlq)
    finally:
        await changelog.stop()


KINDS: dict[str, Callable[[], AbstractAsyncContextManager[Backing]]] = {
    "memory": _memory,
    "changelog-memory": _in_memory_log,
    "changelog-kafka": _kafka_log,
}


@pytest.fixture(
    params=[
        "memory",
        "changelog-memory",
        pytest.param("changelog-kafka", marks=pytest.mark.kafka),
    ]
)
async def backing(request: pytest.FixtureRequest) -> AsyncIterator[Backing]:
    async with KINDS[request.param]() as found:
        yield found


@pytest.fixture(
    params=["changelog-memory", pytest.param("changelog-kafka", marks=pytest.mark.kafka)]
)
async def log(request: pytest.FixtureRequest) -> AsyncIterator[_Log]:
    async with KINDS[request.param]() as found:
        assert isinstance(found, _Log)
        yield found


# --- every store --------------------------------------------------------------------------------


async def test_an_unknown_call_has_no_record(backing: Backing) -> None:
    assert await backing.store().get("r1:1:0", partition=0) is None


async def test_started_then_completed_keeps_attempts_start_and_the_whole_outcome(
    backing: Backing,
) -> None:
    store = backing.store()
    await store.mark_started("r1:1:0", "refund", NOW, partition=1)
    started = await store.get("r1:1:0", partition=1)
    assert started is not None
    assert (started.state, started.attempts, started.outcome) == (CallState.STARTED, 1, None)
    assert started.started_at == NOW
    await store.mark_started("r1:1:0", "refund", NOW + timedelta(seconds=1), partition=1)
    await store.mark_completed("r1:1:0", "refund", DONE.as_replayed(), NOW, partition=1)
    done = await store.get("r1:1:0", partition=1)
    assert done is not None
    assert (done.state, done.attempts, done.tool) == (CallState.COMPLETED, 2, "refund")
    assert done.started_at == NOW + timedelta(seconds=1)
    assert done.outcome == DONE  # every field, and never recorded as a replay


async def test_a_failed_outcome_and_a_call_never_started_are_kept(backing: Backing) -> None:
    store = backing.store()
    await store.mark_completed("r1:1:1", "refund", UNKNOWN, NOW, partition=0)
    call = await store.get("r1:1:1", partition=0)
    assert call is not None
    assert call.outcome == UNKNOWN
    assert (call.attempts, call.started_at) == (0, None)


async def test_records_survive_in_a_new_instance_restored_from_the_changelog(log: _Log) -> None:
    # Changelog stores only: the in-memory twin keeps nothing past its process.
    first = log.store()
    await first.mark_started("r1:1:0", "refund", NOW, partition=0)
    await first.mark_started("r2:1:0", "refund", NOW, partition=1)
    await first.mark_completed("r2:1:0", "refund", DONE, NOW, partition=1)
    second = log.store()
    await second.restore([0, 1])
    started, done = (
        await second.get("r1:1:0", partition=0),
        await second.get("r2:1:0", partition=1),
    )
    assert started is not None
    assert started.state is CallState.STARTED
    assert done is not None
    assert done.outcome == DONE
    # A call's record lives in its request's partition only.
    assert await second.get("r1:1:0", partition=1) is None


# --- the changelog store ------------------------------------------------------------------------


async def test_what_another_instance_wrote_while_it_owned_the_partition_is_seen_after(
    log: _Log,
) -> None:
    mine, theirs = log.store(), log.store()
    await mine.restore([0])
    await mine.mark_started("r1:1:0", "refund", NOW, partition=0)
    mine.revoke([0])  # the partition moves to the other instance…
    await theirs.restore([0])
    await theirs.mark_completed("r1:1:0", "refund", UNKNOWN, NOW, partition=0)
    await mine.restore([0])  # …and back
    call = await mine.get("r1:1:0", partition=0)
    assert call is not None
    assert call.outcome == UNKNOWN
    # Revoked and used before any assignment: caught up on first use too.
    theirs.revoke([0])
    await mine.mark_started("r3:1:0", "refund", NOW, partition=0)
    assert await theirs.get("r3:1:0", partition=0) is not None


async def test_a_tombstone_forgets_the_call_and_an_older_record_never_hides_a_newer(
    log: _Log,
) -> None:
    store = log.store()
    await store.mark_started("r1:1:0", "refund", NOW, partition=0)
    await store.mark_completed("r1:1:0", "refund", DONE, NOW, partition=0)
    assert log.changelog is not None
    # Read again from the start, the "started" record comes after the local "completed".
    store.revoke([0])
    store._positions[0] = 0
    done = await store.get("r1:1:0", partition=0)
    assert done is not None
    assert done.state is CallState.COMPLETED
    await log.changelog.write(OutboundRecord(log.topic, b"r1:1:0", None, partition=0))
    fresh = log.store()
    await fresh.restore([0])
    assert await fresh.get("r1:1:0", partition=0) is None


async def test_a_record_that_cannot_be_read_is_dead_lettered_and_restore_goes_on(
    log: _Log,
) -> None:
    store = log.store()
    assert log.changelog is not None
    await log.changelog.write(OutboundRecord(log.topic, b"r9:1:0", b"\xff\x00garbage", partition=1))
    await store.mark_started("r1:1:0", "refund", NOW, partition=1)
    fresh = log.store()
    await fresh.restore([1])
    assert await fresh.get("r1:1:0", partition=1) is not None
    assert await fresh.get("r9:1:0", partition=1) is None
    if isinstance(log.changelog, InMemoryChangelog):
        letters = [r.value for r in log.changelog.elsewhere]
    else:
        letters = [r.value for r in await read_all(KafkaSettings(), log.dead_letters, expect=2)]
    # Each instance that reads the partition parks it (under the same deterministic event id).
    parked = [dead_letter_pb2.DeadLetter.FromString(v or b"") for v in letters]
    assert {(p.source_offset, p.source_partition, p.consumer) for p in parked} == {
        (0, 1, "tool-executor")
    }


async def test_entries_past_the_retention_leave_the_local_table(log: _Log) -> None:
    # The broker deletes them after the retention; a long-running instance must not keep them.
    now = [datetime.now(UTC)]
    store = log.store(clock=lambda: now[0], keep_for=timedelta(days=1))
    await store.mark_started("r1:1:0", "refund", now[0], partition=0)
    assert await store.get("r1:1:0", partition=0) is not None
    now[0] += timedelta(days=2)
    await store.restore([0])
    assert await store.get("r1:1:0", partition=0) is None


class _GatedChangelog(InMemoryChangelog):
    """Reads wait for `gate`: a catch-up that is still running."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.reading = asyncio.Event()

    async def read(self, partition: int, start: int, apply: Apply) -> int:
        self.reading.set()
        await self.gate.wait()
        return await super().read(partition, start, apply)


async def test_a_call_looked_up_while_its_partition_is_caught_up_waits_for_the_catch_up() -> None:
    # Records of a newly assigned partition may be handled while the listener still reads it.
    gated = _GatedChangelog()
    gated.gate.set()
    backing = _Log(gated, "outcomes", "dlq")
    mine, theirs = backing.store(), backing.store()
    await mine.restore([0])
    mine.revoke([0])
    await theirs.mark_started("r1:1:0", "refund", NOW, partition=0)
    gated.gate.clear()
    gated.reading.clear()
    restoring = asyncio.create_task(mine.restore([0]))
    await gated.reading.wait()
    lookup = asyncio.create_task(mine.get("r1:1:0", partition=0))
    await asyncio.sleep(0.05)
    assert not lookup.done()
    gated.gate.set()
    await restoring
    found = await lookup
    assert found is not None
    assert found.state is CallState.STARTED
