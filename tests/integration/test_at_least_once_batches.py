"""Batched at-least-once on a real broker: unacknowledged batches come back, kills lose nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from stepline_runtime.atleastonce import AtLeastOnce, BrokerPublisher, broker_for, subscribe
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
    for seq in range(total):
        await producer.send(topic, str(seq).encode(), key=f"k{seq % KEYS:02d}".encode())
    await producer.flush()


async def _committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(m.offset for tp, m in offsets.items() if tp.topic == topic and m.offset > 0)


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


async def test_a_batch_whose_outputs_are_not_acknowledged_is_delivered_again(
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
    subscribe(
        broker,
        source,
        group_id=group,
        processor=AtLeastOnce(group, echo, publisher, backoff_s=0.01),
    )
    async with broker:
        await broker.start()
        outputs = await read_all(kafka, sink, expect=total + 1, timeout_s=30)
        for _ in range(50):
            if await _committed(admin, group, source) == total:
                break
            await asyncio.sleep(0.1)

    assert publisher.failed == 1
    # The record whose ack failed was handled again (delivered again, not committed past).
    assert len(handled) > total
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
