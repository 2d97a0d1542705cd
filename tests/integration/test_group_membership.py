"""Group membership of the keyed consumer and the transactional processor on a real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime

import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stepline_runtime.atleastonce import AtLeastOnce, InMemoryPublisher
from stepline_runtime.keyed import KeyedConsumer
from stepline_runtime.processor import ProcessorConfig, TransactionalProcessor
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.settings import KafkaSettings
from tests.kafkatools import create_topics

pytestmark = pytest.mark.kafka


class _Seen(ConsumerRebalanceListener):  # type: ignore[misc]
    """Every assignment and revocation one member heard."""

    def __init__(self) -> None:
        self.events: list[tuple[str, frozenset[int]]] = []

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self.events.append(("revoked", frozenset(tp.partition for tp in revoked)))

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self.events.append(("assigned", frozenset(tp.partition for tp in assigned)))

    def assigned(self) -> frozenset[int] | None:
        found = [parts for kind, parts in self.events if kind == "assigned"]
        return found[-1] if found else None


async def _ignore(record: InboundRecord) -> Sequence[OutboundRecord]:
    return []


def _member(
    kafka: KafkaSettings, topic: str, group: str, instance: str, seen: _Seen
) -> KeyedConsumer:
    static = kafka.model_copy(update={"group_instance_id": instance, "session_timeout_ms": 10_000})
    return KeyedConsumer(
        static,
        [topic],
        group_id=group,
        processor=AtLeastOnce(group, _ignore, InMemoryPublisher()),
        listener=seen,
    )


async def _until(condition: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_static_member_restarted_in_time_gets_its_partitions_back_without_a_rebalance(
    kafka: KafkaSettings, admin: AIOKafkaAdminClient, unique: Callable[[str], str]
) -> None:
    topic, group = unique("static-in"), unique("static-group")
    await create_topics(admin, topic, partitions=2)
    seen_a, seen_b = _Seen(), _Seen()
    a = _member(kafka, topic, group, "inst-a", seen_a)
    b = _member(kafka, topic, group, "inst-b", seen_b)
    await a.start()
    try:
        # One after the other, as instances of a deployment start: two static members joining a
        # new group in the same instant can take turns rebalancing it (aiokafka's eager protocol).
        await _until(lambda: len(seen_a.assigned() or ()) == 2)
        await b.start()
        await _until(lambda: len(seen_a.assigned() or ()) == len(seen_b.assigned() or ()) == 1)
        before_a, settled_b = seen_a.assigned(), len(seen_b.events)
        await a.stop()  # a static member leaves no LeaveGroup behind: nobody rebalances
        restarted = _Seen()
        a = _member(kafka, topic, group, "inst-a", restarted)
        await a.start()
        await _until(lambda: restarted.assigned() is not None)
        await asyncio.sleep(1)
        assert restarted.assigned() == before_a
        assert seen_b.events[settled_b:] == []  # b never stopped processing
    finally:
        await a.stop()
        await b.stop()


async def test_a_member_joins_with_one_join_request_so_its_join_alone_never_rebalances(
    kafka: KafkaSettings, admin: AIOKafkaAdminClient, unique: Callable[[str], str]
) -> None:
    """aiokafka 0.14 sends one JoinGroup per configured assignor, each with a longer protocol
    list; the second arrives while the group completes the first, with other metadata, so the
    broker rebalances again ("Updating metadata for member … during CompletingRebalance"). With
    several members and kills that went on for minutes in `make chaos-scaled` (hundreds of
    generations of the router and executor groups, nothing consumed). A lone member joining a
    new group shows it: generation 2 instead of 1."""
    topic, group = unique("one-join"), unique("one-join-group")
    await create_topics(admin, topic, partitions=2)
    seen = _Seen()
    member = KeyedConsumer(
        kafka,
        [topic],
        group_id=group,
        processor=AtLeastOnce(group, _ignore, InMemoryPublisher()),
        listener=seen,
    )
    await member.start()
    try:
        await _until(lambda: len(seen.assigned() or ()) == 2)
        await asyncio.sleep(1)  # a second join request would have rebalanced by now
        consumer = member._consumer
        assert consumer is not None
        # The generation is not public in aiokafka; the coordinator holds the one it joined.
        assert consumer._coordinator.generation == 1
    finally:
        await member.stop()


async def _assigned_soon_after_it_appears(
    admin: AIOKafkaAdminClient, topic: str, held: Callable[[], frozenset[int]]
) -> None:
    """With the member holding nothing, create `topic` (2 partitions): both held within 30 s."""
    assert held() == frozenset()
    await create_topics(admin, topic, partitions=2)
    appeared = time.monotonic()
    await _until(lambda: len(held()) == 2, timeout_s=60)
    assert time.monotonic() - appeared < 30


async def test_partitions_missing_from_the_leaders_metadata_are_assigned_soon_after_they_appear(
    kafka: KafkaSettings, admin: AIOKafkaAdminClient, unique: Callable[[str], str]
) -> None:
    """A group leader whose metadata lacks the topic (leaderless partitions after a broker
    restart, or a topic created later) assigns nothing, and aiokafka rebalances only when its
    metadata changes: at the next periodic refresh, 5 minutes by default. `make chaos-scaled`
    saw billing's three instances hold no partition for 3.6 minutes after a broker restart.
    The keyed consumer refreshes its metadata often enough that this lasts seconds."""
    topic, group = unique("late-topic"), unique("late-topic-group")
    seen = _Seen()
    member = KeyedConsumer(
        kafka,
        [topic],
        group_id=group,
        processor=AtLeastOnce(group, _ignore, InMemoryPublisher()),
        listener=seen,
    )
    await member.start()
    try:
        await _until(lambda: seen.assigned() is not None)  # joined, with nothing to assign
        await _assigned_soon_after_it_appears(admin, topic, lambda: seen.assigned() or frozenset())
    finally:
        await member.stop()


class _Stateless:
    """A `StatefulHandler` with no state and no outputs: only the assignment matters here."""

    def forget(self, partition: int) -> None:
        """Nothing to drop."""

    async def restore(self, partition: int, records: Sequence[InboundRecord]) -> None:
        """Nothing to fold."""

    async def handle(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        """No outputs."""
        return []

    async def tick(self, partition: int, now: datetime) -> Sequence[OutboundRecord]:
        """No timers."""
        return []


async def test_the_transactional_processor_gets_partitions_of_a_late_topic_within_seconds(
    kafka: KafkaSettings, admin: AIOKafkaAdminClient, unique: Callable[[str], str]
) -> None:
    """The planner's processor is a group consumer too: the same 5-minute wait applied to it."""
    topic, changelog, group = unique("late-input"), unique("late-state"), unique("late-eos")
    await create_topics(admin, changelog, partitions=2)
    processor = TransactionalProcessor(
        ProcessorConfig(app_id=group, inputs=(topic,), changelog=changelog), _Stateless(), kafka
    )
    running = asyncio.create_task(processor.run())
    try:
        await asyncio.sleep(5)  # joined the group, with nothing to assign
        await _assigned_soon_after_it_appears(admin, topic, lambda: processor.partitions)
    finally:
        processor.stop()
        await asyncio.wait_for(running, 30)
