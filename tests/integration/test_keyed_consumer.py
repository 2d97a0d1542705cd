"""The key-ordered consumer on a real broker: keys in parallel, commit by prefix, no loss."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from stepline_runtime.atleastonce import AtLeastOnce, BrokerPublisher, broker_for
from stepline_runtime.keyed import KeyedConsumer, decode_done
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.kafkatools import create_topics, read_all

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
KEYS = 12


class _AckFailsOnce(BrokerPublisher):
    """Hands records to the real producer, but reports the first batch's acks as failed."""

    failed = 0

    async def send(self, records: Sequence[OutboundRecord]) -> Awaitable[None]:
        acked = await super().send(records)
        if self.failed:
            return acked
        self.failed += 1

        async def lost() -> None:
            await acked
            raise ConnectionError("acknowledgement lost")

        return lost()


async def _produce(producer: AIOKafkaProducer, topic: str, total: int) -> None:
    await _produce_from(producer, topic, 0, total)


async def _produce_from(producer: AIOKafkaProducer, topic: str, start: int, end: int) -> None:
    for seq in range(start, end):
        await producer.send(topic, str(seq).encode(), key=f"k{seq % KEYS:02d}".encode())
    await producer.flush()


async def _committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(m.offset for tp, m in offsets.items() if tp.topic == topic and m.offset > 0)


@contextlib.asynccontextmanager
async def _running(
    kafka: KafkaSettings,
    broker: KafkaBroker,
    source: str,
    group: str,
    processor: AtLeastOnce,
    max_in_flight: int = 256,
) -> AsyncIterator[KeyedConsumer]:
    consumer = KeyedConsumer(
        kafka, [source], group_id=group, processor=processor, max_in_flight=max_in_flight
    )
    async with broker:
        await broker.start()
        await consumer.start()
        try:
            yield consumer
        finally:
            await consumer.stop()


async def _wait_committed(
    admin: AIOKafkaAdminClient, group: str, topic: str, expected: int, timeout_s: float = 10
) -> int:
    committed = -1
    for _ in range(int(timeout_s * 10)):
        committed = await _committed(admin, group, topic)
        if committed == expected:
            break
        await asyncio.sleep(0.1)
    return committed


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(args, cwd=ROOT, stdout=sink, stderr=sink, env=os.environ.copy())


def _in_key_order(values: list[tuple[bytes, int]]) -> None:
    """Per key, the first delivery of each input comes in input order."""
    firsts: dict[bytes, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for key, seq in values:
        if seq not in seen:
            seen.add(seq)
            firsts[key].append(seq)
    for key, seqs in firsts.items():
        assert seqs == sorted(seqs), key


async def test_an_output_not_acknowledged_is_handled_again_before_the_commit_passes_it(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    source, sink, group = unique("batch-in"), unique("batch-out"), unique("batch-group")
    await create_topics(admin, source, sink, partitions=1)
    total = 40
    await _produce(producer, source, total)
    handled: list[int] = []

    async def echo(record: InboundRecord) -> Sequence[OutboundRecord]:
        handled.append(int(record.value or b"0"))
        return [OutboundRecord(sink, record.key, record.value)]

    broker = broker_for(kafka, "test-batch")
    publisher = _AckFailsOnce(broker)
    processor = AtLeastOnce(group, echo, publisher, backoff_s=0.01)
    async with _running(kafka, broker, source, group, processor):
        outputs = await read_all(kafka, sink, expect=total + 1, timeout_s=30)
        await _wait_committed(admin, group, source, total)

    assert publisher.failed == 1
    # The record whose ack failed was handled again before its offset was committed.
    assert len(handled) == total + 1
    assert {int(r.value or b"") for r in outputs} == set(range(total))
    _in_key_order([(r.key or b"", int(r.value or b"")) for r in outputs])
    assert await _committed(admin, group, source) == total


async def test_sigkill_mid_batch_loses_nothing(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    source, sink, group = unique("kill-in"), unique("kill-out"), unique("kill-group")
    await create_topics(admin, source, sink, partitions=3)
    await ensure_topics(admin, [t for t in CATALOG if t.name == Topics.DLQ], partitions=3)
    total = 1_500
    await _produce(producer, source, total)
    log = tmp_path / "echo.log"
    args = [
        sys.executable,
        "-m",
        "tests.integration.apps.echo",
        *("--group", group, "--input", source, "--output", sink, "--delay-ms", "3"),
    ]
    progress = [0]
    follower = AIOKafkaConsumer(
        sink, auto_offset_reset="earliest", **kafka.client_kwargs("test-kill-progress")
    )
    await follower.start()

    async def follow() -> None:
        while True:
            for records in (await follower.getmany(timeout_ms=200)).values():
                progress[0] += len(records)

    following = asyncio.create_task(follow())
    kills = 0
    try:
        for threshold in (total // 5, total // 2):
            process = _spawn(args, log)
            try:
                for _ in range(1200):
                    if progress[0] >= threshold:
                        break
                    await asyncio.sleep(0.05)
                assert process.poll() is None, log.read_text()[-3000:]
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        process = _spawn(args, log)
        try:
            for _ in range(1200):
                if await _committed(admin, group, source) == total:
                    break
                await asyncio.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await follower.stop()

    assert kills == 2
    assert await _committed(admin, group, source) == total
    outputs = await read_all(kafka, sink, expect=progress[0], timeout_s=30)
    values = [(r.key or b"", int(r.value or b"")) for r in outputs]
    # Nothing lost; duplicates (from the kills) are allowed, and each key stays in order.
    assert {seq for _, seq in values} == set(range(total))
    _in_key_order(values)


async def test_a_slow_record_holds_back_only_its_key_and_the_commit_position(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    source, sink, group = unique("slow-in"), unique("slow-out"), unique("slow-group")
    await create_topics(admin, source, sink, partitions=1)
    await producer.send(source, b"slow-0", key=b"slow")
    await producer.send(source, b"slow-1", key=b"slow")
    for seq in range(20):
        await producer.send(source, b"%d" % seq, key=b"k%d" % (seq % 5))
    await producer.flush()
    release = asyncio.Event()
    order: list[bytes] = []

    async def handle(record: InboundRecord) -> Sequence[OutboundRecord]:
        if record.value == b"slow-0":
            await release.wait()
        order.append(record.value or b"")
        return [OutboundRecord(sink, record.key, record.value)]

    broker = broker_for(kafka, "test-slow")
    processor = AtLeastOnce(group, handle, BrokerPublisher(broker))
    async with _running(kafka, broker, source, group, processor) as consumer:
        others = await read_all(kafka, sink, expect=20, timeout_s=30)
        # Every other key finished while the slow record still runs; its key waits behind it.
        assert {r.value for r in others} == {b"%d" % seq for seq in range(20)}
        assert consumer.in_flight == 2
        await asyncio.sleep(0.5)  # several commit intervals
        assert await _committed(admin, group, source) == 0
        release.set()
        assert await _wait_committed(admin, group, source, 22) == 22
    assert order[-2:] == [b"slow-0", b"slow-1"]


async def test_records_in_flight_never_exceed_the_bound(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    source, sink, group = unique("bound-in"), unique("bound-out"), unique("bound-group")
    await create_topics(admin, source, sink, partitions=2)
    total = 60
    await _produce(producer, source, total)
    running = [0, 0]  # now, peak

    async def handle(record: InboundRecord) -> Sequence[OutboundRecord]:
        running[0] += 1
        running[1] = max(running)
        await asyncio.sleep(0.02)
        running[0] -= 1
        return [OutboundRecord(sink, record.key, record.value)]

    broker = broker_for(kafka, "test-bound")
    processor = AtLeastOnce(group, handle, BrokerPublisher(broker))
    async with _running(kafka, broker, source, group, processor, max_in_flight=5):
        outputs = await read_all(kafka, sink, expect=total, timeout_s=30)
        assert await _wait_committed(admin, group, source, total) == total
    assert len(outputs) == total
    # Twelve keys were available: the bound, not the keys, limited the parallelism.
    assert running[1] == 5


async def test_a_rebalance_drains_the_records_in_flight_and_redoes_nothing(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    source, sink, group = unique("reb-in"), unique("reb-out"), unique("reb-group")
    await create_topics(admin, source, sink, partitions=4)
    handled: dict[str, list[int]] = {"first": [], "second": []}

    def handler(instance: str) -> Callable[[InboundRecord], Awaitable[Sequence[OutboundRecord]]]:
        async def handle(record: InboundRecord) -> Sequence[OutboundRecord]:
            await asyncio.sleep(0.01)
            handled[instance].append(int(record.value or b"0"))
            return [OutboundRecord(sink, record.key, record.value)]

        return handle

    first_broker, second_broker = broker_for(kafka, "test-reb-1"), broker_for(kafka, "test-reb-2")
    first = AtLeastOnce(group, handler("first"), BrokerPublisher(first_broker))
    second = AtLeastOnce(group, handler("second"), BrokerPublisher(second_broker))
    produced = 0
    enough = asyncio.Event()

    async def trickle() -> None:
        # Records keep arriving until well after the rebalance, so some are in flight during it.
        nonlocal produced
        while not enough.is_set():
            for _ in range(20):
                await producer.send(source, b"%d" % produced, key=b"k%02d" % (produced % KEYS))
                produced += 1
            await producer.flush()
            await asyncio.sleep(0.1)

    async with _running(kafka, first_broker, source, group, first):
        producing = asyncio.create_task(trickle())
        await read_all(kafka, sink, expect=20, timeout_s=30)
        # A second instance joins while the first has records in flight: the group rebalances.
        async with _running(kafka, second_broker, source, group, second) as joined:
            for _ in range(600):
                if joined.partitions and len(handled["second"]) >= 50:
                    break
                await asyncio.sleep(0.05)
            enough.set()
            await producing
            total = produced
            outputs = await read_all(kafka, sink, expect=total, timeout_s=60)
            assert await _wait_committed(admin, group, source, total, timeout_s=30) == total
    assert {int(r.value or b"") for r in outputs} == set(range(total))
    # No crash, so no record was handled twice: revoked partitions finished and committed first.
    assert handled["second"], "the second instance never got a partition"
    assert sorted(handled["first"] + handled["second"]) == list(range(total))


async def test_after_a_crash_records_done_behind_a_stuck_one_are_not_done_again(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    source, sink, group = unique("skip-in"), unique("skip-out"), unique("skip-group")
    await create_topics(admin, source, sink, partitions=1)
    await producer.send(source, b"stuck", key=b"stuck")
    await _produce(producer, source, 30)
    log = tmp_path / "echo.log"
    args = [
        sys.executable,
        "-m",
        "tests.integration.apps.echo",
        *("--group", group, "--input", source, "--output", sink),
    ]
    process = _spawn([*args, "--hold-key", "stuck"], log)
    try:
        await read_all(kafka, sink, expect=30, timeout_s=60)
        await asyncio.sleep(1.0)  # a few commit intervals: the done records are in the metadata
        [meta] = (await admin.list_consumer_group_offsets(group)).values()
        assert meta.offset == 0, "the stuck record holds the position"
        assert decode_done(0, meta.metadata) == set(range(1, 31)), meta.metadata
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    process = _spawn(args, log)
    try:
        assert await _wait_committed(admin, group, source, 31, timeout_s=60) == 31
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    outputs = [r.value for r in await read_all(kafka, sink, expect=31, timeout_s=30)]
    # The stuck record was redelivered; the thirty done behind it were skipped, not redone.
    assert sorted(outputs) == sorted([b"stuck", *(b"%d" % seq for seq in range(30))])


async def test_a_partition_revoked_while_its_batch_is_prepared_is_not_started(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    # Billing prepares a batch (its ledger transaction) before starting its records; a
    # rebalance that revokes the partition meanwhile must not crash the fetcher.
    source, sink, group = unique("prep-in"), unique("prep-out"), unique("prep-group")
    await create_topics(admin, source, sink, partitions=1)
    await _produce(producer, source, 10)
    handled: list[int] = []
    owner: list[KeyedConsumer] = []

    async def prepare(records: Sequence[InboundRecord]) -> None:
        if records and owner[0].partitions:
            # What the group coordinator's callback does when a rebalance lands here.
            await owner[0].revoked(list(owner[0].partitions))

    async def handle(record: InboundRecord) -> Sequence[OutboundRecord]:
        handled.append(int(record.value or b"0"))
        return []

    broker = broker_for(kafka, "test-prep")
    processor = AtLeastOnce(group, handle, BrokerPublisher(broker), prepare=prepare)
    consumer = KeyedConsumer(kafka, [source], group_id=group, processor=processor)
    owner.append(consumer)
    async with broker:
        await broker.start()
        await consumer.start()
        try:
            # The fetcher keeps running (it used to end on a KeyError) ...
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(consumer.wait()), 3)
        finally:
            await consumer.stop()
    # ... and the revoked partition's records were left to its next owner.
    assert handled == []
    assert await _committed(admin, group, source) == 0
